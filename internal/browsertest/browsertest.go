// Package browsertest gives tests a real headless Chromium (Debian's, which
// scripts/chromium installs) driven by chromedp, and saves their
// screenshots, so that pages are tested as a person sees them. make test
// sets SAGAFLOW_CHROMIUM, SAGAFLOW_REQUIRE_BROWSER (a missing browser then
// fails the test instead of skipping it) and SAGAFLOW_SCREENSHOTS.
package browsertest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Path is the browser the tests drive.
func Path(t testing.TB) string {
	t.Helper()
	for _, p := range []string{os.Getenv("SAGAFLOW_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p == "" {
			continue
		}
		if _, err := exec.LookPath(p); err == nil {
			return p
		}
	}
	if os.Getenv("SAGAFLOW_REQUIRE_BROWSER") != "" {
		t.Fatal("no Chromium at /usr/bin/chromium: run scripts/chromium (make test does)")
	}
	t.Skip("no Chromium here (scripts/chromium installs Debian's); make test runs these tests")
	return ""
}

// Start starts a headless Chromium for the test (stopped when it ends) and
// returns a tab's context.
func Start(t testing.TB) context.Context {
	t.Helper()
	path := Path(t)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true),
		chromedp.WindowSize(1360, 900))...)
	browser, cancelBrowser := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancelBrowser(); cancelAlloc() })
	if err := chromedp.Do(browser); err != nil { // starts the browser
		t.Fatalf("start Chromium: %v", err)
	}
	return browser
}

// Dir is where screenshots go: SAGAFLOW_SCREENSHOTS, or a directory under
// the system's temporary one.
func Dir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("SAGAFLOW_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "sagaflow-screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Shot saves a screenshot of the whole page of tab as name.png in Dir and
// returns its path.
func Shot(t testing.TB, tab context.Context, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(Dir(t), name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s", path)
	return path
}
