"""lowbit.signatures.parameters_of: a wrapper takes its source's parameters, written once."""
import inspect

import pytest

from lowbit.signatures import keywords_of, parameters_of


def _source(a: int, b: float = 2.0, *, c: str = "x") -> str:
    return f"{a}{b}{c}"


@parameters_of(_source)
def _wrapper(**kw: object) -> dict:
    return kw


def test_calls_bind_to_the_source_parameters_with_its_defaults():
    assert _wrapper(1) == {"a": 1, "b": 2.0, "c": "x"}
    assert _wrapper(1, 3.0, c="y") == {"a": 1, "b": 3.0, "c": "y"}
    assert _wrapper(b=5.0, a=4) == {"a": 4, "b": 5.0, "c": "x"}
    with pytest.raises(TypeError, match="unexpected keyword argument 'd'"):
        _wrapper(1, d=2)
    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        _wrapper()


def test_the_wrapper_shows_the_source_parameters_and_its_own_return_and_doc():
    sig = inspect.signature(_wrapper)
    assert list(sig.parameters) == ["a", "b", "c"] and sig.parameters["b"].default == 2.0
    assert sig.return_annotation is dict and _wrapper.__name__ == "_wrapper"


def test_a_source_with_star_args_is_refused():
    with pytest.raises(TypeError, match="source must take only named parameters"):
        parameters_of(lambda *a: a)


def _step(x: int, *, scale: float = 1.0, name: str = "n") -> str:
    return f"{name}:{x * scale}"


@keywords_of(_step)
def _front(a: int, *, offset: int = 0, **kw: object) -> str:
    return _step(a + offset, **kw)


def test_keywords_of_adds_the_source_keywords_checked_and_defaulted():
    assert _front(1) == "n:1.0" and _front(1, offset=2, scale=2.0, name="m") == "m:6.0"
    assert list(inspect.signature(_front).parameters) == ["a", "offset", "scale", "name"]
    with pytest.raises(TypeError, match="unexpected keyword argument 'scal'"):
        _front(1, scal=2.0)
    with pytest.raises(TypeError, match=r"f must take named parameters and \*\*kwargs"):
        keywords_of(_step)(lambda a: a)
    with pytest.raises(TypeError, match=r"both define \['scale'\]"):
        keywords_of(_step)(lambda a, *, scale=1, **kw: a)
