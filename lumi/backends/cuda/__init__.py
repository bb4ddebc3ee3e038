"""The CUDA backend (CuPy): lumi's kernels (``kernels``, CUDA C in ``kernels.cu``), weights held on the GPU in
their stored width (``storage``), page-locked staging for a partial offload (``staging``) and a greedy step
replayed as a CUDA graph (``graph``). Nothing here imports CuPy: each piece uses the array module it is given,
so the logic runs on the CPU against a stand-in (tests/fake_cuda.py)."""
