package chaos_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sagaflow/sagaflow/chaos"
)

var bin string

// TestMain builds the sagaflow binary the role processes run.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sagaflow-chaos-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "sagaflow")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/sagaflow/sagaflow/cmd/sagaflow").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build sagaflow: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// setup gives a scenario its configuration. The scenarios need the real
// Apache Kafka broker script, which the README's test command provides.
func setup(t *testing.T, sc chaos.Scenario) chaos.Config {
	t.Helper()
	script := os.Getenv("SAGAFLOW_KAFKA_SCRIPT")
	if script == "" {
		t.Skip("the failure scenarios run against real Apache Kafka brokers: run `make test` (it sets SAGAFLOW_KAFKA_SCRIPT)")
	}
	d := 40 * time.Second
	if sc.MinDuration > d {
		d = sc.MinDuration
	}
	dir := os.Getenv("SAGAFLOW_CHAOS_DIR")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "sagaflow-chaos")
	}
	return chaos.Config{Bin: bin, Dir: dir, KafkaScript: script, Duration: d, Rate: 40, Progress: testWriter{t}}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Each scenario is its own test: load with faults, then every saga must end
// and every invariant must hold (`verify`, dead-letter topics included).
func TestScenarios(t *testing.T) {
	var results []*chaos.Result
	defer func() {
		// The README's test command prints this table after the run.
		if path := os.Getenv("SAGAFLOW_CHAOS_REPORT"); path != "" && len(results) > 0 {
			var b strings.Builder
			chaos.PrintTable(&b, results)
			_ = os.MkdirAll(filepath.Dir(path), 0o755)
			_ = os.WriteFile(path, []byte(b.String()), 0o644)
		}
	}()
	for _, sc := range chaos.Scenarios {
		t.Run(sc.Name, func(t *testing.T) {
			cfg := setup(t, sc)
			res, err := chaos.Run(context.Background(), cfg, sc)
			if err != nil {
				t.Fatal(err)
			}
			results = append(results, res)
			var b strings.Builder
			chaos.PrintTable(&b, []*chaos.Result{res})
			t.Logf("seed %d\n%s", res.Seed, b.String())
			if !res.OK() {
				t.Fatalf("scenario %s failed (seed %d); logs and verify report kept in %s\n%s", sc.Name, res.Seed, res.Dir, res.Verify)
			}
			if res.Started == 0 || res.Completed == 0 || res.Compensated+res.Failed == 0 {
				t.Fatalf("the load did not exercise both outcomes: %+v", res)
			}
		})
	}
}
