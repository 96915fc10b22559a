"""Bit packing: exact round trips at every width, the documented bit order, and the sizes."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.packing import pack, packed_nbytes, unpack


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 16), data=st.data())
def test_pack_unpack_round_trip(bits, data):
    codes = data.draw(st.lists(st.integers(0, 2**bits - 1), max_size=200))
    c = torch.tensor(codes, dtype=torch.int64)
    packed = pack(c, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(len(codes), bits)
    assert torch.equal(unpack(packed, bits, len(codes)).long(), c)


@pytest.mark.parametrize("bits", range(1, 9))
def test_size_is_within_one_group_of_ideal(bits):
    n = 1_000_003
    ideal = (n * bits + 7) // 8
    assert ideal <= packed_nbytes(n, bits) <= ideal + bits


def test_bit_order_is_lsb_first():
    # 4-bit: code 0 in the low nibble of byte 0.
    assert pack(torch.tensor([0x1, 0x2]), 4).tolist() == [0x21]
    # 2-bit: codes 3,0,1,2 -> 0b10_01_00_11
    assert pack(torch.tensor([3, 0, 1, 2]), 2).tolist() == [0b10010011]
    # 3-bit: stream of codes 5 (101), 3 (011), 7 (111) LSB first -> bits 101 110 111 ...
    b = pack(torch.tensor([5, 3, 7, 0, 0, 0, 0, 0]), 3)
    stream = int.from_bytes(bytes(b.tolist()), "little")
    assert [(stream >> (3 * i)) & 7 for i in range(3)] == [5, 3, 7]
    # 12-bit: little-endian 16-bit words
    assert pack(torch.tensor([0xABC]), 12).tolist() == [0xBC, 0x0A]


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack(torch.tensor([16]), 4)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        pack(torch.tensor([-1]), 2)
    with pytest.raises(TypeError, match="integer"):
        pack(torch.tensor([1.0]), 4)
    with pytest.raises(ValueError, match="bits"):
        pack(torch.tensor([1]), 0)


def test_unpack_rejects_wrong_length():
    with pytest.raises(ValueError, match="need"):
        unpack(torch.zeros(3, dtype=torch.uint8), 4, 7)
