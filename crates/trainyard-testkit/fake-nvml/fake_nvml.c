/*
 * A fake libnvidia-ml.so.1 for tests: the NVML functions the agent uses, reporting the GPUs named in
 * the environment variable FAKE_NVML_GPUS ("NAME:MEMORY_MIB,NAME:MEMORY_MIB,..."; empty = none).
 * Functions it lacks come back to nvml-wrapper as FailedToLoadSymbol, as with an old real driver.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define MAX_GPUS 16

typedef struct { unsigned int index; } fake_device;
typedef fake_device *nvmlDevice_t;

typedef struct { unsigned int gpu; unsigned int memory; } nvmlUtilization_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;

static fake_device devices[MAX_GPUS];
static char names[MAX_GPUS][96];
static unsigned long long memory_mib[MAX_GPUS];
static unsigned int count = 0;

static void load(void) {
    const char *spec = getenv("FAKE_NVML_GPUS");
    count = 0;
    if (!spec) return;
    char buffer[2048];
    strncpy(buffer, spec, sizeof buffer - 1);
    buffer[sizeof buffer - 1] = 0;
    for (char *item = strtok(buffer, ","); item && count < MAX_GPUS; item = strtok(NULL, ",")) {
        char *colon = strrchr(item, ':');
        memory_mib[count] = colon ? strtoull(colon + 1, NULL, 10) : 16384;
        if (colon) *colon = 0;
        strncpy(names[count], item, sizeof names[count] - 1);
        devices[count].index = count;
        count++;
    }
}

nvmlReturn_t nvmlInit_v2(void) { load(); return NVML_SUCCESS; }
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; load(); return NVML_SUCCESS; }
nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }
const char *nvmlErrorString(nvmlReturn_t r) { return r == NVML_SUCCESS ? "Success" : "Fake NVML error"; }

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) { if (!n) return NVML_ERROR_INVALID_ARGUMENT; *n = count; return NVML_SUCCESS; }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *device) {
    if (i >= count || !device) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devices[i];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *index) { *index = d->index; return NVML_SUCCESS; }

/* The device node's number (/dev/nvidia<minor>): the index plus FAKE_NVML_MINOR_OFFSET, as a real
   host's minor numbers need not follow the indexes. */
nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t d, unsigned int *minor) {
    const char *offset = getenv("FAKE_NVML_MINOR_OFFSET");
    *minor = d->index + (offset ? (unsigned int)strtoul(offset, NULL, 10) : 0);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length) {
    if ((unsigned int)snprintf(name, length, "%s", names[d->index]) >= length) return NVML_ERROR_INSUFFICIENT_SIZE;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length) {
    if ((unsigned int)snprintf(uuid, length, "GPU-fa4e0000-0000-4000-8000-%012u", d->index) >= length) return NVML_ERROR_INSUFFICIENT_SIZE;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    m->total = memory_mib[d->index] * 1024ULL * 1024ULL;
    m->used = 512ULL * 1024ULL * 1024ULL;
    m->free = m->total - m->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m) {
    m->total = memory_mib[d->index] * 1024ULL * 1024ULL;
    m->reserved = 0;
    m->used = 512ULL * 1024ULL * 1024ULL;
    m->free = m->total - m->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    u->gpu = 7 * (d->index + 1);
    u->memory = 3;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    snprintf(version, length, "550.54.15");
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) { *version = 12040; return NVML_SUCCESS; }
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) { *version = 12040; return NVML_SUCCESS; }
