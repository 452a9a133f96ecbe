package main

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"lifeboat/hrl"
	"lifeboat/tracker"
)

// runApp runs the command line in-process, as main would, and returns its
// output and exit code.
func runApp(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	app := newApp(&out, &errb)
	err := app.RunContext(context.Background(), permuteArgs(app, append([]string{"lifeboat"}, args...)))
	if err != nil {
		errb.WriteString("lifeboat: " + err.Error() + "\n")
		code = exitCode(err)
	}
	return out.String(), errb.String(), code
}

// trackedJournal drives a tracker.Volume over a sparse file and returns its
// journal directory: several sealed segments, two of them ending in tags.
func trackedJournal(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "vol.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(8 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	jdir := filepath.Join(dir, "journal")
	v := tracker.NewVolume(img, jdir)
	v.SegmentAge = 0
	v.SegmentBytes = 64 << 10
	if err := v.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 4096)
	write := func(n int) {
		for range n {
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			if _, err := v.WriteAt(b, rng.Int64N(2048)*4096); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(40)
	if _, err := v.Tag(hrl.TagCrash, "crash-1"); err != nil {
		t.Fatal(err)
	}
	write(20)
	if _, err := v.WriteAt([]byte("unaligned"), 12345); err != nil {
		t.Fatal(err)
	}
	if err := v.Trim(1<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Tag(hrl.TagApp, "app-1"); err != nil {
		t.Fatal(err)
	}
	write(5)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(segmentFiles(t, jdir)); n < 4 {
		t.Fatalf("tracker wrote %d segments, want at least 4 for these tests", n)
	}
	return jdir
}

// segmentFiles lists the segment paths of a journal directory in seq order.
func segmentFiles(t *testing.T, dir string) []string {
	t.Helper()
	seqs, err := hrl.ListSegments(hrl.OSFS{}, dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range seqs {
		out = append(out, filepath.Join(dir, hrl.SegmentName(s)))
	}
	return out
}

// copyDir copies the regular files of a directory.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		in, err := os.Open(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out, err := os.Create(filepath.Join(dst, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, in); err != nil {
			t.Fatal(err)
		}
		in.Close()
		out.Close()
	}
	return dst
}

func truncateBy(t *testing.T, path string, n int64) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, st.Size()-n); err != nil {
		t.Fatal(err)
	}
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// buildBinary builds the lifeboat binary once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "lifeboat-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "lifeboat")
		out, err := exec.Command("go", "build", "-ldflags", "-X main.version=test-1.2.3", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = err
			t.Logf("go build: %s", out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build lifeboat: %v", buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}
