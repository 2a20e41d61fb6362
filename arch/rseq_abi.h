/* The Linux rseq ABI as this allocator uses it: the layout of the kernel's struct rseq (with
 * mm_cid, which the installed kernel headers may predate), the same on every architecture, and
 * the per-CPU slab geometry the critical sections index. Shared by C++ and the asm strings. The
 * abort signature is per architecture: arch/<arch>/percpu.h. */
#pragma once

/* Offsets in struct rseq. cpu_id_start and node_id are never read here; no field but rseq_cs
 * is ever written (the others belong to the kernel). */
#define FASTMALLOC_RSEQ_CPU_ID_OFFSET 4
#define FASTMALLOC_RSEQ_CS_OFFSET 8
#define FASTMALLOC_RSEQ_MM_CID_OFFSET 24

/* getauxval(AT_RSEQ_FEATURE_SIZE) reports how much of struct rseq the kernel fills; 28 or more
 * means mm_cid is live (Linux 6.3+). */
#define FASTMALLOC_AT_RSEQ_FEATURE_SIZE 27
#define FASTMALLOC_RSEQ_MM_CID_FEATURE_SIZE 28

/* Each CPU's slab is 2^18 bytes: a header word per size class, then the object slots. */
#define FASTMALLOC_SLAB_SHIFT 18

#ifndef __ASSEMBLER__
#include <cstddef>
#include <cstdint>

namespace fastmalloc::arch {

inline constexpr uint32_t kRseqCpuIdOffset = FASTMALLOC_RSEQ_CPU_ID_OFFSET;
inline constexpr uint32_t kRseqMmCidOffset = FASTMALLOC_RSEQ_MM_CID_OFFSET;
inline constexpr unsigned kSlabShift = FASTMALLOC_SLAB_SHIFT;
// cpu_id before registration, and after a failed one.
inline constexpr uint32_t kRseqCpuIdUninitialized = 0xffffffffu;
inline constexpr uint32_t kRseqCpuIdRegistrationFailed = 0xfffffffeu;

struct alignas(32) RseqArea {
  uint32_t cpu_id_start;
  uint32_t cpu_id;
  uint64_t rseq_cs;
  uint32_t flags;
  uint32_t node_id;
  uint32_t mm_cid;
  uint32_t padding;
};
static_assert(offsetof(RseqArea, cpu_id) == FASTMALLOC_RSEQ_CPU_ID_OFFSET);
static_assert(offsetof(RseqArea, rseq_cs) == FASTMALLOC_RSEQ_CS_OFFSET);
static_assert(offsetof(RseqArea, mm_cid) == FASTMALLOC_RSEQ_MM_CID_OFFSET);
static_assert(sizeof(RseqArea) == 32);

}  // namespace fastmalloc::arch
#endif
