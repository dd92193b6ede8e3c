package kafkax

import (
	"context"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill"
)

// Logger is the watermill logger of Sagaflow's routers, subscribers and
// publishers: watermill's Info lines go to log at Debug (they narrate
// every subscription and handler start), and a line at a level log does not
// enable costs nothing. watermill's own slog adapter turns each line's fields into
// slog arguments before slog looks at the level, and its routers and
// subscribers write trace lines for every message: about 2% of the CPU of
// an in-process stack (sagaflow bench --cpuprofile).
func Logger(log *slog.Logger) watermill.LoggerAdapter {
	return &logger{log: log, adapter: watermill.NewSlogLoggerWithLevelMapping(log, demoteInfo)}
}

var demoteInfo = map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug}

type logger struct {
	log     *slog.Logger // for the level check; adapter writes through it
	adapter watermill.LoggerAdapter
}

func (l *logger) enabled(level slog.Level) bool {
	return l.log.Enabled(context.Background(), level)
}

func (l *logger) Error(msg string, err error, fields watermill.LogFields) {
	if l.enabled(slog.LevelError) {
		l.adapter.Error(msg, err, fields)
	}
}

func (l *logger) Info(msg string, fields watermill.LogFields) {
	if l.enabled(demoteInfo[slog.LevelInfo]) {
		l.adapter.Info(msg, fields)
	}
}

func (l *logger) Debug(msg string, fields watermill.LogFields) {
	if l.enabled(slog.LevelDebug) {
		l.adapter.Debug(msg, fields)
	}
}

func (l *logger) Trace(msg string, fields watermill.LogFields) {
	if l.enabled(watermill.LevelTrace) {
		l.adapter.Trace(msg, fields)
	}
}

func (l *logger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	args := make([]any, 0, 2*len(fields))
	for k, v := range fields {
		args = append(args, k, v)
	}
	return Logger(l.log.With(args...))
}
