"""Data sources, one module per kernel file or tool: meminfo, psi, vmstat,
cgroup (kept-open files parsed by the compiled readers in ext/, each read
returning a frozen dataclass), tegrastats (a child process whose lines the
compiled parser turns into dicts), nvml (a discrete GPU's memory through
pynvml), and procmem (one process's memory through psutil)."""
