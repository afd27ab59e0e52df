/* An empty program for the probe overhead benchmark. With BPF_ENABLE_STATS on, the kernel
 * times every program run with two clock reads; an empty program's time per run is that
 * measurement's own cost, which the benchmark takes off the probes' run time. */
int floor_prog(void *ctx)
{
    return 0;
}
