/*
 * Our own allocations: gn_alloc and gn_free. A sanitized build
 * (make SANITIZE=1) takes them from malloc, which AddressSanitizer tracks
 * exactly; the VM's allocators behind enif_alloc hide overflows inside
 * their blocks. A leaf header: it includes nothing of ours, so that the
 * reaper, the registry and the snapshot checker can use it without the
 * library's shared declarations (gen_native.h).
 */
#ifndef GN_ALLOC_H
#define GN_ALLOC_H

#ifdef GN_SANITIZE
#include <stdlib.h>
#define gn_alloc malloc
#define gn_free free
#else
#include <erl_nif.h>
#define gn_alloc enif_alloc
#define gn_free enif_free
#endif

#endif
