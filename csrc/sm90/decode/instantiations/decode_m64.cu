// Main decode kernel for CTAs of 64 query rows (one file per tile so the build runs in parallel).
#include "sm90/decode/launch.cuh"

template cudaError_t mla::run_decode_main<64>(const mla::DecodeParams&, cudaStream_t);
