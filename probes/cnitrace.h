/* Shared by every cnitrace probe: the few helpers all of them need.
 *
 * Kept minimal on purpose: bcc compiles each probe against whatever kernel headers the node
 * has (matching or a stand-in), so nothing here may depend on kernel struct layouts.
 */
#ifndef CNITRACE_H
#define CNITRACE_H

#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf.h>

/* Map helpers must be written out in each probe: bcc's rewriter refuses map calls in macros. */

#endif /* CNITRACE_H */
