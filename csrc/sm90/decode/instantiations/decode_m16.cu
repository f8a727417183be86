// Main decode kernel for CTAs of 16 query rows (one file per tile so the build runs in parallel).
#include "sm90/decode/launch.cuh"

template cudaError_t mla::run_decode_main<16>(const mla::DecodeParams&, cudaStream_t);
