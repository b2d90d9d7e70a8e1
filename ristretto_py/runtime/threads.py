"""One BLAS thread for the float matrix products of the numpy and fixed-point runtimes.

OpenBLAS cuts a matrix product differently for each thread count, and the last bit of a float32
sum moves with the cut: on this project's 2-core machine about three quarters of the values of
a 6400x500 by 500x50 product differ between one and two threads. With one thread a forward pass
gives the same bytes whatever the machine's core count, in one process or on any worker of a
cluster (``--cluster``), which is where the parallel work of a search comes from."""
from threadpoolctl import threadpool_limits


def one_blas_thread():
    """A context in which BLAS runs on one thread (about 0.2 ms to enter)."""
    return threadpool_limits(limits=1, user_api="blas")
