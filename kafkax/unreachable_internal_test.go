package kafkax

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/IBM/sarama"
)

// withAdmin retries what a broker that cannot be reached (one that died and
// is still listed) makes fail, and nothing else: a refusal or a bad
// setting would fail again. The retry itself was checked by hand against a
// real three-broker cluster with a node killed (kfake cannot keep a dead
// broker in its metadata).
func TestUnreachable(t *testing.T) {
	t.Parallel()
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	cases := []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("describe the Kafka cluster at x: %w", refused), true},
		{fmt.Errorf("create Kafka topic t: %w", io.EOF), true},
		{sarama.ErrOutOfBrokers, true},
		{&sarama.TopicError{Err: sarama.ErrNotController}, true},
		{fmt.Errorf("create Kafka topic t: %w", &sarama.TopicError{Err: sarama.ErrInvalidReplicationFactor}), false},
		{&TopicDiffError{}, false},
		{errors.New("partition t/0 has no leader 30s after its creation"), false},
	}
	for _, tc := range cases {
		if got := unreachable(tc.err); got != tc.want {
			t.Errorf("unreachable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
