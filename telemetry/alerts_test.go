package telemetry_test

import (
	"os"
	"os/exec"
	"testing"
)

// promtool is Prometheus's promtool (scripts/promtool installs it; make
// test sets SAGAFLOW_PROMTOOL and SAGAFLOW_REQUIRE_PROMTOOL, and then a
// missing promtool fails the test instead of skipping it).
func promtool(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SAGAFLOW_PROMTOOL"); p != "" {
		return p
	}
	if p, err := exec.LookPath("promtool"); err == nil {
		return p
	}
	if os.Getenv("SAGAFLOW_REQUIRE_PROMTOOL") != "" {
		t.Fatal("no promtool: run scripts/promtool (make test does)")
	}
	t.Skip("no promtool here (scripts/promtool installs it); make test runs this test")
	return ""
}

// The alert rules are valid, and each fires on the series that must fire
// it and stays silent on those that must not (deploy/prometheus/
// alerts_test.yml, run by promtool).
func TestAlertRules(t *testing.T) {
	t.Parallel()
	bin := promtool(t)
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		cmd := exec.Command(bin, args...)
		cmd.Dir = "../deploy/prometheus"
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %v: %v\n%s", args, err, out)
		}
		t.Logf("promtool %v:\n%s", args, out)
	}
}
