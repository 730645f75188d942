"""Data sources, one module per kernel file or tool: meminfo, psi, cgroup,
vmstat, tegrastats.  Each reader keeps its file open, parses with the
compiled parsers in ext/, and returns a frozen dataclass."""
