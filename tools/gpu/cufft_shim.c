/*
 * libcufft.so.11 for astra-toolbox's PyPI wheel on a CUDA 13 machine (not part of the package).
 *
 * The astra 2.5.0 wheel links libcufft.so.11 (CUDA 12) but uses only five cuFFT functions, all
 * for FBP filtering; projection needs none. This library exports those five with the version
 * node libcufft.so.11 and forwards each to the libcufft.so.12 present on the machine, or returns
 * CUFFT_INTERNAL_ERROR (5) when that library or symbol cannot be found, so astra loads and its
 * projectors run either way. Build with build_cufft_shim.sh; see README.md beside this file.
 */
#include <dlfcn.h>
#include <stddef.h>

typedef int cufftResult;
typedef int cufftHandle;
typedef int cufftType;
typedef float cufftReal;
typedef struct { float x, y; } cufftComplex;
typedef void *cudaStream_t;

enum { CUFFT_INTERNAL_ERROR = 5 };

static void *target(const char *name) {
    static void *lib = NULL;
    if (lib == NULL) {
        lib = dlopen("libcufft.so.12", RTLD_NOW | RTLD_LOCAL);
        if (lib == NULL) return NULL;
    }
    return dlsym(lib, name);
}

cufftResult cufftPlan1d(cufftHandle *plan, int nx, cufftType type, int batch) {
    cufftResult (*f)(cufftHandle *, int, cufftType, int) = target("cufftPlan1d");
    return f ? f(plan, nx, type, batch) : CUFFT_INTERNAL_ERROR;
}

cufftResult cufftExecR2C(cufftHandle plan, cufftReal *in, cufftComplex *out) {
    cufftResult (*f)(cufftHandle, cufftReal *, cufftComplex *) = target("cufftExecR2C");
    return f ? f(plan, in, out) : CUFFT_INTERNAL_ERROR;
}

cufftResult cufftExecC2R(cufftHandle plan, cufftComplex *in, cufftReal *out) {
    cufftResult (*f)(cufftHandle, cufftComplex *, cufftReal *) = target("cufftExecC2R");
    return f ? f(plan, in, out) : CUFFT_INTERNAL_ERROR;
}

cufftResult cufftSetStream(cufftHandle plan, cudaStream_t stream) {
    cufftResult (*f)(cufftHandle, cudaStream_t) = target("cufftSetStream");
    return f ? f(plan, stream) : CUFFT_INTERNAL_ERROR;
}

cufftResult cufftDestroy(cufftHandle plan) {
    cufftResult (*f)(cufftHandle) = target("cufftDestroy");
    return f ? f(plan) : CUFFT_INTERNAL_ERROR;
}
