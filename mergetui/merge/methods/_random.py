"""Reproducible random masks for DARE and DELLA, cheap enough to draw twice.

Every chunk of every input gets its own generator, seeded from (seed, tensor name, input, chunk),
so a mask can be regenerated in a later pass instead of being stored, and a tensor's mask does not
depend on which tensors were merged before it. Draws are 16-bit uniforms (four per 64-bit word from
the generator), so a keep probability is resolved to a multiple of 2**-16; that is four times less
generator work than float32 uniforms and invisible in the statistics of a mask. A probability that
is a multiple of 2**-8 (density 0.5, 0.25...) uses 8-bit draws, eight per word.
Streams differ between device types (CPU and CUDA generators differ), never between runs.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_U16 = 1 << 16


def stream_key(seed: int | None, tensor_name: str, input_index: int) -> int:
    """A 64-bit key for one input of one tensor; seed None draws a fresh one."""
    if seed is None:
        return secrets.randbits(64)
    digest = hashlib.blake2b(
        f"{int(seed)}\0{tensor_name}\0{input_index}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little")


def _chunk_seed(key: int, chunk_index: int) -> int:
    # CPU generators use 32 bits of the seed: mix the chunk index into all of them.
    digest = hashlib.blake2b(
        key.to_bytes(8, "little") + chunk_index.to_bytes(8, "little"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _random_bits(
    key: int, chunk_index: int, count: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """`count` uniform integers of `dtype` (every bit pattern equally likely) for one chunk, cut
    from 64-bit words of the chunk's own generator."""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(_chunk_seed(key, chunk_index))
    per_word = 8 // dtype.itemsize
    words = torch.empty((count + per_word - 1) // per_word, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), None, generator=generator)
    return words.view(dtype)[:count]


def random_u16(key: int, chunk_index: int, count: int, device: torch.device) -> torch.Tensor:
    """`count` uniform int16 draws (all 65536 values equally likely) for one chunk."""
    import torch

    return _random_bits(key, chunk_index, count, torch.int16, device)


def random_u8(key: int, chunk_index: int, count: int, device: torch.device) -> torch.Tensor:
    """`count` uniform int8 draws (all 256 values equally likely) for one chunk."""
    import torch

    return _random_bits(key, chunk_index, count, torch.int8, device)


def bernoulli_keep(
    key: int, chunk_index: int, count: int, probability: float, device: torch.device
) -> torch.Tensor:
    """Keep mask as float32 0/1 with P(1) = probability (rounded to a multiple of 2**-16).

    A probability that is a multiple of 2**-8 (0.5, 0.25, 0.75...) needs only 8-bit draws: half
    the generator's work, for exactly the same probability.
    """
    import torch

    threshold = round(probability * _U16)
    if threshold >= _U16:
        return torch.ones(count, dtype=torch.float32, device=device)
    if threshold <= 0:
        return torch.zeros(count, dtype=torch.float32, device=device)
    keep = torch.empty(count, dtype=torch.float32, device=device)
    if threshold % 256 == 0:
        # int8 draws are u - 128 for u uniform in 0..255: keep = [u < T / 256].
        return torch.lt(
            random_u8(key, chunk_index, count, device), threshold // 256 - 128, out=keep
        )
    # The int16 draws are u - 32768, so keep = [u < T] = [draw < T - 32768]: one comparison
    # written straight to float32 (three times faster than converting, then clamping T - u).
    draws = random_u16(key, chunk_index, count, device)
    return torch.lt(draws, threshold - (_U16 // 2), out=keep)


def uniform(key: int, chunk_index: int, count: int, device: torch.device) -> torch.Tensor:
    """Uniform float32 draws in (0, 1), on the 2**-16 grid's midpoints."""
    import torch

    draws = random_u16(key, chunk_index, count, device).to(torch.float32)
    return draws.add_(_U16 // 2 + 0.5).mul_(1.0 / _U16)
