"""Dense bit-packing of k-bit integer codes into a uint8 stream (k in 1..8).

Code i occupies bits [i*k, (i+1)*k) of the stream, least significant bit first, so the
stream is exactly ceil(N*k/8) bytes: a trailing partial byte is the only padding.
Vectorised by groups of 8 codes (8 codes * k bits = k whole bytes).
"""

from __future__ import annotations

import torch


def packed_nbytes(n_codes: int, bits: int) -> int:
    """Bytes taken by `n_codes` codes of `bits` bits each."""
    return (n_codes * bits + 7) // 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes: (N,) integer tensor with values < 2**bits -> (ceil(N*bits/8),) uint8."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    codes = codes.reshape(-1)
    n = codes.numel()
    if bits == 8:
        return codes.to(torch.uint8).clone()
    pad = (-n) % 8
    c = torch.nn.functional.pad(codes.to(torch.int64), (0, pad)).view(-1, 8)  # (G, 8)
    shifts = torch.arange(8, dtype=torch.int64) * bits
    value = (c << shifts).sum(dim=1)  # (G,) holds 8*bits <= 56 bits
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    out = ((value[:, None] >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)  # (G*bits,)
    return out[: packed_nbytes(n, bits)].clone()


def unpack_codes(packed: torch.Tensor, bits: int, n_codes: int) -> torch.Tensor:
    """Inverse of pack_codes: (ceil(N*bits/8),) uint8 -> (N,) uint8."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if packed.numel() != packed_nbytes(n_codes, bits):
        raise ValueError(
            f"packed stream has {packed.numel()} bytes, expected {packed_nbytes(n_codes, bits)} "
            f"for {n_codes} codes of {bits} bits"
        )
    if bits == 8:
        return packed.clone()
    groups = (n_codes + 7) // 8
    b = torch.nn.functional.pad(packed.to(torch.int64), (0, groups * bits - packed.numel()))
    b = b.view(groups, bits)  # (G, bits)
    value = (b << (torch.arange(bits, dtype=torch.int64) * 8)).sum(dim=1)  # (G,)
    shifts = torch.arange(8, dtype=torch.int64) * bits
    codes = (value[:, None] >> shifts) & ((1 << bits) - 1)  # (G, 8)
    return codes.reshape(-1)[:n_codes].to(torch.uint8)
