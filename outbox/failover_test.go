package outbox_test

import (
	"context"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/outbox"
)

// blackhole is a TCP proxy that can stop forwarding in both directions
// without closing anything: to PostgreSQL, its side of the connection looks
// alive (the kernel still acknowledges what it sends) while the client says
// nothing more, as when a host loses power behind a firewall.
type blackhole struct {
	ln     net.Listener
	target string
	holed  atomic.Bool
	hole   chan struct{}
	mu     sync.Mutex
	conns  []net.Conn
}

func newBlackhole(t *testing.T, target string) *blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln, target: target, hole: make(chan struct{})}
	go b.serve()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, c := range b.conns {
			c.Close()
		}
	})
	return b
}

func (b *blackhole) serve() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", b.target)
		if err != nil {
			c.Close()
			continue
		}
		b.mu.Lock()
		b.conns = append(b.conns, c, s)
		b.mu.Unlock()
		go b.pipe(s, c)
		go b.pipe(c, s)
	}
}

// pipe copies src to dst until the hole opens; then it stops reading and
// holds both ends open.
func (b *blackhole) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if b.holed.Load() {
			<-make(chan struct{}) // parked until the test's cleanup closes the sockets
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			return
		}
	}
}

func (b *blackhole) open() { b.holed.Store(true) }

// A relay whose connection to PostgreSQL silently stops carrying anything
// (its host vanished) loses the lead within the stated failover time
// (outbox.LeaderTimeout plus the standby's retry), and a standby relay
// publishes what is written next. (Before: the poll relay's session — and
// its advisory lock — stayed until TCP keepalive gave up, about two hours
// with Linux defaults; the WAL relay's slot stayed held for the default
// wal_sender_timeout, a minute.)
func TestRelayFailoverWhenLeaderHostVanishes(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		u, err := url.Parse(e.db.URL)
		if err != nil {
			t.Fatal(err)
		}
		hole := newBlackhole(t, u.Host)
		u.Host = hole.ln.Addr().String()
		poolA, err := pgxpool.New(ctx, u.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(poolA.Close)
		e.consume(ctx, nil)
		a, _ := e.startRelay(ctx, nil, func(cfg *outbox.RelayConfig) { cfg.Pool = poolA })
		waitFor(t, "relay A leads", func() bool { return a.Stats()[0].Leader })
		b, _ := e.startRelay(ctx, nil, nil)
		if err := e.write(ctx, "before"); err != nil {
			t.Fatal(err)
		}
		e.waitEffects(ctx, 1)
		if b.Stats()[0].Leader {
			t.Fatal("two relays lead at once")
		}
		hole.open()
		start := time.Now()
		bound := outbox.LeaderTimeout + 20*time.Second
		for !b.Stats()[0].Leader {
			if time.Since(start) > bound {
				t.Fatalf("the standby did not lead within %s of the leader's host vanishing", bound)
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("%s: the standby leads %s after the leader's connection went silent", e.mode, time.Since(start).Round(100*time.Millisecond))
		if err := e.write(ctx, "after"); err != nil {
			t.Fatal(err)
		}
		e.waitEffects(ctx, 2)
		e.checkOrder(ctx)
	})
}
