#ifndef KILN_LIBFUZZER_SHIM_H
#define KILN_LIBFUZZER_SHIM_H

#include <stddef.h>
#include <stdint.h>

/// libFuzzer's driver (in the runtime that `-sanitize=fuzzer` links). kiln-fuzz calls it
/// from its own entry point: SwiftPM links an executable target with `main` renamed to
/// the target's entry function, so libFuzzer's `main` is never used. Only declared here;
/// nothing calls it outside a `make fuzz` build.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
