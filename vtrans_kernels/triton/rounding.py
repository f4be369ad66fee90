"""Stores of fp32 results into the output dtype, correct under the Triton interpreter too."""
import triton
import triton.language as tl


@triton.jit
def cast_out(value, dtype: tl.constexpr, ROUND_BF16: tl.constexpr):
    """``value`` (fp32) as ``dtype``. With ROUND_BF16 (interpreter only, see launch.round_bf16_by_hand) the
    round-to-nearest-even to bf16 is done on the bits, after which the interpreter's truncating cast is exact."""
    if ROUND_BF16:
        bits = value.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        value = bits.to(tl.float32, bitcast=True)
    return value.to(dtype)
