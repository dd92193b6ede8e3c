package kafkax_test

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The broker script's default ports lie below Linux's ephemeral port
// range, so that a client socket that happens to hold the port cannot keep
// the broker from starting ("Address already in use"). Before: 39092 and
// 39192, inside 32768-60999.
func TestKafkaScriptPortsBelowEphemeralRange(t *testing.T) {
	t.Parallel()
	script, err := os.ReadFile("../scripts/kafka/kafka")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`PORT_BASE="\$\{want_port_base:-([0-9]+)\}"`).FindSubmatch(script)
	if m == nil {
		t.Fatal("scripts/kafka/kafka: no default PORT_BASE found")
	}
	base, _ := strconv.Atoi(string(m[1]))
	low := 32768 // Linux's default
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			low, _ = strconv.Atoi(f[0])
		}
	}
	// Three brokers' client ports base..base+2, controllers base+100..+102.
	if highest := base + 102; highest >= low {
		t.Fatalf("default ports %d-%d reach the ephemeral range from %d", base, highest, low)
	}
}
