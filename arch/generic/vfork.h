// vfork() for the export layer. Without rseq the per-CPU slabs are used only under their locks,
// so a vfork child is safe with glibc's vfork, and the library defines none.
#pragma once

#define FM_DEFINE_VFORK(returned)
