"""The paper's fourth step: tiled-GEMM FFN and mobile export."""
