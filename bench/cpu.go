package bench

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// clockTicks is Linux's USER_HZ, the unit of the CPU times in
// /proc/<pid>/stat (100 on every architecture Go supports on Linux).
const clockTicks = 100

// ProcessCPU is the CPU time a process (with its child processes) spent
// during the measured window.
type ProcessCPU struct {
	Name string `json:"name"`
	PID  int    `json:"pid,omitempty"`
	// Seconds of user plus system time.
	Seconds float64 `json:"cpu_seconds"`
	// Cores is Seconds divided by the window's length.
	Cores float64 `json:"cores"`
	// Note says what the figure covers.
	Note string `json:"note,omitempty"`
}

// cpuSource is a process whose CPU time is sampled at the window's start
// and end.
type cpuSource struct {
	name, note string
	pid        int // 0: this process
	start      float64
	ok         bool
	// warmAfter, when set, is the CPU time (seconds, since the process
	// started) below which it is still warming up: see warmBrokerCPU.
	warmAfter float64
}

// warmBrokerCPU is the CPU time a Kafka broker's JVM has used, since it
// started, below which its figures are those of a JVM still compiling its
// hot code. Measured on the two-core VM (scripts/kafka/kafka start --fresh,
// then `sagaflow bench --duration 20s --concurrency 64` five times): the
// broker had used 6, 44, 68, 89 and 109 s of CPU before the runs, which
// made 162, 191, 220, 222 and 246 sagas/s at 4.3, 2.1, 1.5, 1.4 and 1.3 ms
// of broker CPU per saga.
const warmBrokerCPU = 60.0

// isJVM reports whether process pid is a Java virtual machine (Apache
// Kafka's broker; not, say, Redpanda's, which compiles nothing at run time).
func isJVM(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
	return err == nil && strings.TrimSpace(string(b)) == "java"
}

// noteFor is what the report says of s's CPU figure: its note, and that the
// process was still warming up when the window opened.
func (s *cpuSource) noteFor() string {
	if s.warmAfter <= 0 || s.start >= s.warmAfter {
		return s.note
	}
	return fmt.Sprintf("%s; still warming up: %.0f s of CPU since it started, under %.0f s (a JVM compiles its hot code under its first load), so this run's figures are pessimistic: run again to measure it warm",
		s.note, s.start, s.warmAfter)
}

// addSource appends a process to sources, or names it along an entry of the
// same pid (one process can be the API and the broker).
func addSource(sources []*cpuSource, s *cpuSource) []*cpuSource {
	for _, o := range sources {
		if o.pid == s.pid {
			o.name += " + " + s.name
			return sources
		}
	}
	return append(sources, s)
}

func (s *cpuSource) sample() (float64, error) {
	if s.pid == 0 {
		return selfCPUSeconds(), nil
	}
	return treeCPUSeconds(s.pid)
}

// selfCPUSeconds is the user plus system time of this process.
func selfCPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// procStat is what Sagaflow reads of /proc/<pid>/stat.
type procStat struct {
	ppid int
	// ticks is utime+stime+cutime+cstime: the process's own time and that
	// of its children it has reaped.
	ticks uint64
}

// parseStat parses a /proc/<pid>/stat line. The command name (field 2) is
// in parentheses and may hold spaces and parentheses, so fields are counted
// from the last ')'.
func parseStat(line string) (procStat, error) {
	end := strings.LastIndexByte(line, ')')
	if end < 0 {
		return procStat{}, errors.New("no command name")
	}
	f := strings.Fields(line[end+1:])
	// f[0] is field 3 (state): field k is f[k-3].
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("%d fields after the command name, want at least 15", len(f))
	}
	var st procStat
	var err error
	if st.ppid, err = strconv.Atoi(f[1]); err != nil {
		return procStat{}, fmt.Errorf("ppid: %w", err)
	}
	for _, k := range []int{14, 15, 16, 17} { // utime stime cutime cstime
		v, err := strconv.ParseInt(f[k-3], 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("field %d: %w", k, err)
		}
		if v > 0 {
			st.ticks += uint64(v)
		}
	}
	return st, nil
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(string(b))
}

// treeCPUSeconds is the CPU time of process pid and its descendants: each
// live process's own time plus what it reaped of its exited children
// (PostgreSQL's backends come and go; the postmaster reaps them).
func treeCPUSeconds(pid int) (float64, error) {
	root, err := readStat(pid)
	if err != nil {
		return 0, fmt.Errorf("read CPU time of pid %d: %w", pid, err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	stats := map[int]procStat{}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(p)
		if err != nil {
			continue // exited meanwhile
		}
		stats[p] = st
		children[st.ppid] = append(children[st.ppid], p)
	}
	total := root.ticks
	queue := append([]int(nil), children[pid]...)
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		total += stats[p].ticks
		queue = append(queue, children[p]...)
	}
	return float64(total) / clockTicks, nil
}

// listenerPID finds the process listening on TCP port at a local address,
// from /proc/net/tcp{,6} and the processes' socket descriptors. It needs to
// read other processes' /proc/<pid>/fd (same user or root).
func listenerPID(port int) (int, error) {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(fields[1], ":")
			if !ok {
				continue
			}
			if p, err := strconv.ParseUint(hexPort, 16, 16); err == nil && int(p) == port {
				inodes["socket:["+fields[9]+"]"] = true
			}
		}
		fh.Close()
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("nothing listens on port %d here", port)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", e.Name(), "fd")
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if link, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && inodes[link] {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("no readable process owns the listener on port %d", port)
}

// localPort returns the port of a host:port address when the host is this
// machine (a loopback address or localhost).
func localPort(hostport string) (int, bool) {
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return 0, false
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return 0, false
	}
	if host == "localhost" || host == "" {
		return port, true
	}
	ip := net.ParseIP(host)
	return port, ip != nil && ip.IsLoopback()
}

// urlPort is localPort of a URL's host (default port def).
func urlPort(raw string, def string) (int, bool) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return 0, false
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), def)
	}
	return localPort(host)
}
