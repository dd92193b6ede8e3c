package kafkax_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/sagaflow/sagaflow/kafkax"
)

// TestLogger checks which of watermill's lines reach the log at each level,
// with their fields and those given to With.
func TestLogger(t *testing.T) {
	t.Parallel()
	fields := watermill.LogFields{"message_uuid": "m1"}
	write := func(l watermill.LoggerAdapter) {
		l = l.With(watermill.LogFields{"topic": "t1"})
		l.Error("an error", errors.New("boom"), fields)
		l.Info("an info", fields)
		l.Debug("a debug", fields)
		l.Trace("a trace", fields)
	}
	for _, tc := range []struct {
		level slog.Level
		want  []string // lines, in order, as "LEVEL msg"
	}{
		{slog.LevelError, []string{"ERROR an error"}},
		{slog.LevelInfo, []string{"ERROR an error"}},
		{slog.LevelDebug, []string{"ERROR an error", "DEBUG an info", "DEBUG a debug"}},
		{watermill.LevelTrace, []string{"ERROR an error", "DEBUG an info", "DEBUG a debug", "DEBUG-4 a trace"}},
	} {
		t.Run(tc.level.String(), func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: tc.level}))
			write(kafkax.Logger(log))
			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			if buf.Len() == 0 {
				lines = nil
			}
			if len(lines) != len(tc.want) {
				t.Fatalf("%d lines, want %d:\n%s", len(lines), len(tc.want), buf.String())
			}
			for i, line := range lines {
				level, msg, _ := strings.Cut(tc.want[i], " ")
				for _, part := range []string{"level=" + level, "msg=\"" + msg + "\"", "topic=t1", "message_uuid=m1"} {
					if !strings.Contains(line, part) {
						t.Errorf("line %d lacks %s: %s", i, part, line)
					}
				}
			}
			if !strings.Contains(buf.String(), "error=boom") {
				t.Errorf("the error line lacks the error: %s", buf.String())
			}
		})
	}
}

// TestLoggerDisabledIsFree checks that a line at a level the log does not
// enable allocates nothing (watermill's adapter converts its fields first).
// (Not parallel: testing.AllocsPerRun refuses to run in a parallel test.)
func TestLoggerDisabledIsFree(t *testing.T) {
	l := kafkax.Logger(slog.New(slog.NewTextHandler(&bytes.Buffer{}, &slog.HandlerOptions{Level: slog.LevelInfo})))
	fields := watermill.LogFields{"message_uuid": "m1", "topic": "t1"}
	if n := testing.AllocsPerRun(100, func() {
		l.Trace("a trace", fields)
		l.Debug("a debug", fields)
		l.Info("an info", fields)
	}); n != 0 {
		t.Errorf("disabled lines allocate %.0f times, want 0", n)
	}
}
