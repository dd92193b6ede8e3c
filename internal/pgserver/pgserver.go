// Package pgserver runs a private PostgreSQL server from the machine's server
// binaries (initdb, pg_ctl, postgres). Tests use it for a throwaway cluster per
// test binary and `sagaflow dev` uses it for a cluster kept under ./.sagaflow.
//
// When the current process runs as root the cluster is initialised and run as
// the `postgres` system user, because PostgreSQL refuses to run as root.
package pgserver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Options configure a server.
type Options struct {
	// Dir holds the data directory ("data"), the socket directory and the log.
	Dir string
	// Port to listen on at 127.0.0.1; 0 picks a free one.
	Port int
	// Settings are passed to postgres as -c name=value (for example fsync=off
	// for throwaway test clusters).
	Settings map[string]string
}

// Defaults are the settings every server gets unless Options.Settings says
// otherwise: logical decoding, which the outbox relay streams from, with
// room for a replication slot per test database, and a bound on the WAL an
// abandoned slot can hold back.
var Defaults = map[string]string{
	"wal_level":              "logical",
	"max_replication_slots":  "100",
	"max_wal_senders":        "100",
	"max_slot_wal_keep_size": "4GB",
}

// Server is a running PostgreSQL server.
type Server struct {
	dir    string
	port   int
	bindir string
	cred   *syscall.Credential
}

// ErrBinariesMissing is returned when no PostgreSQL server binaries are found.
var ErrBinariesMissing = errors.New("PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL 15 (apt-get install postgresql-15) or put its bin directory on PATH")

// BinDir finds the directory of the PostgreSQL server binaries: `pg_config
// --bindir`, then /usr/lib/postgresql/*/bin (newest first), then PATH.
func BinDir() (string, error) {
	var candidates []string
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		candidates = append(candidates, strings.TrimSpace(string(out)))
	}
	for _, v := range []string{"17", "16", "15", "14"} {
		candidates = append(candidates, filepath.Join("/usr/lib/postgresql", v, "bin"))
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		candidates = append(candidates, filepath.Dir(p))
	}
	for _, dir := range candidates {
		if isExec(filepath.Join(dir, "initdb")) && isExec(filepath.Join(dir, "pg_ctl")) {
			return dir, nil
		}
	}
	return "", ErrBinariesMissing
}

func isExec(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// Start initialises the cluster in opts.Dir if it has none yet, then starts it
// and waits until it accepts connections.
func Start(ctx context.Context, opts Options) (*Server, error) {
	bindir, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("resolve PostgreSQL directory %s: %w", opts.Dir, err)
	}
	s := &Server{dir: dir, bindir: bindir}
	if os.Geteuid() == 0 {
		if s.cred, err = postgresCredential(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("create PostgreSQL directory %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("create PostgreSQL directory %s: %w", dir, err)
	}
	if err := s.chown(dir); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(s.dataDir(), "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		if err := s.initdb(ctx); err != nil {
			return nil, err
		}
	}
	// A server left running by a process that died (kill -9 of `sagaflow
	// dev`) still holds this data directory: stop it before starting anew.
	if _, err := os.Stat(filepath.Join(s.dataDir(), "postmaster.pid")); err == nil {
		if s.command(ctx, "pg_ctl", "status", "-D", s.dataDir()).Run() == nil {
			if err := s.Stop(); err != nil {
				return nil, err
			}
		}
	}
	s.port = opts.Port
	if s.port == 0 {
		if s.port, err = FreePort(); err != nil {
			return nil, err
		}
	} else if err := portFree(s.port); err != nil {
		return nil, err
	}
	args := []string{"-c", "listen_addresses=127.0.0.1", "-p", strconv.Itoa(s.port), "-k", dir}
	settings := maps.Clone(Defaults)
	maps.Copy(settings, opts.Settings)
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		args = append(args, "-c", k+"="+settings[k])
	}
	cmd := s.command(ctx, "pg_ctl", "start", "-w", "-t", "60", "-s", "-D", s.dataDir(),
		"-l", s.LogFile(), "-o", strings.Join(args, " "))
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("start PostgreSQL in %s: %w: %s%s", dir, err, out, s.logTail())
	}
	return s, nil
}

// postgresCredential returns the credential of the `postgres` system user.
func postgresCredential() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs a 'postgres' system user to run PostgreSQL (useradd --system postgres): %w", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("parse uid of postgres: %w", err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("parse gid of postgres: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func (s *Server) chown(path string) error {
	if s.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
		return fmt.Errorf("give %s to the postgres user: %w", path, err)
	}
	return nil
}

func (s *Server) initdb(ctx context.Context) error {
	// The postgres user must be able to reach the directory.
	if s.cred != nil {
		check := s.command(ctx, "/usr/bin/test", "-w", s.dir)
		check.Dir = "/"
		if err := check.Run(); err != nil {
			return fmt.Errorf("the postgres user cannot write %s (a parent directory is not traversable for other users): move the project or chmod o+x its parents", s.dir)
		}
	}
	cmd := s.command(ctx, "initdb", "-D", s.dataDir(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb %s: %w: %s", s.dataDir(), err, out)
	}
	return nil
}

func (s *Server) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	path := name
	if !strings.Contains(name, "/") {
		path = filepath.Join(s.bindir, name)
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = s.dir
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	return cmd
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }

// LogFile is the server's log.
func (s *Server) LogFile() string { return filepath.Join(s.dir, "postgres.log") }

func (s *Server) logTail() string {
	b, err := os.ReadFile(s.LogFile())
	if err != nil {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\nlog " + s.LogFile() + ":\n" + string(b)
}

// Port is the TCP port at 127.0.0.1.
func (s *Server) Port() int { return s.port }

// URL is the connection string of database db as the postgres superuser.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// Stop shuts the server down with the fast mode (clients are disconnected,
// the server checkpoints and exits).
func (s *Server) Stop() error {
	cmd := s.command(context.Background(), "pg_ctl", "stop", "-m", "fast", "-w", "-s", "-D", s.dataDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("stop PostgreSQL in %s: %w: %s", s.dir, err, out)
	}
	return nil
}

// Restart stops the server (fast mode) and starts it again on the same data
// and port. Used by failure tests.
func (s *Server) Restart(ctx context.Context) error {
	cmd := s.command(ctx, "pg_ctl", "restart", "-m", "fast", "-w", "-t", "60", "-s", "-D", s.dataDir(), "-l", s.LogFile())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("restart PostgreSQL in %s: %w: %s", s.dir, err, out)
	}
	return nil
}

// FreePort asks the kernel for a free TCP port on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StablePort picks a free port on 127.0.0.1 below Linux's ephemeral range
// (32768–60999), for a server that will be stopped and started again on the
// same port: while it is down, an ephemeral port could be handed to some
// client's outgoing connection and the restart would fail to bind.
func StablePort(span int) (int, error) {
	for range 200 {
		base := 20000 + rand.IntN(12000-span)
		free := true
		for p := base; p < base+span && free; p++ {
			free = portFree(p) == nil
		}
		if free {
			return base, nil
		}
	}
	return 0, errors.New("no free port between 20000 and 32000")
}

func portFree(port int) error {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("port %d at 127.0.0.1 is in use: stop what listens there or choose another port", port)
	}
	return l.Close()
}

// WaitReady waits until the server accepts TCP connections or ctx ends.
func (s *Server) WaitReady(ctx context.Context) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for PostgreSQL at %s: %w", addr, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
