// Package azuritetest starts Azurite, the Azure Blob Storage emulator, for a
// test: on 127.0.0.1, a free port and a temporary data directory, with the
// well-known development account. A test can stop Azurite and start it
// again on the same port and data, to act out an outage of the storage.
//
// Azurite is found through LIFEBOAT_AZURITE (set by .ci/run), on PATH as
// azurite-blob, or where .ci/deps installs it
// (${XDG_CACHE_HOME:-~/.cache}/lifeboat/azurite-VERSION). Without it a test
// is skipped, unless LIFEBOAT_REQUIRE_INTEGRATION=1 makes that a failure.
package azuritetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"lifeboat/internal/testenv"
)

// The development account every Azurite accepts (published in Azurite's
// and Azure's documentation; not a secret).
const (
	Account = "devstoreaccount1"
	Key     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// Environment variables read by Start.
const (
	// EnvBinary names the azurite-blob (or azurite) executable to use.
	EnvBinary = "LIFEBOAT_AZURITE"
	// EnvRequire set to 1 turns a missing Azurite into a test failure.
	EnvRequire = testenv.EnvRequire
)

// Version is the Azurite release .ci/deps installs (3.36 and later need a
// newer Node than Debian's).
const Version = "3.35.0"

// How long Azurite gets to answer after a start and to exit after SIGTERM
// before it is killed.
const (
	startTimeout = 60 * time.Second
	stopTimeout  = 15 * time.Second
)

var (
	ErrNotInstalled = errors.New("azurite-blob not found")
	ErrRunning      = errors.New("azurite is already running")
)

// Server is a running (or stopped) Azurite blob service of one test.
type Server struct {
	// URL is the blob service endpoint of the account:
	// http://127.0.0.1:PORT/devstoreaccount1.
	URL     string
	Account string
	Key     string
	Port    int
	Dir     string // Azurite's --location: blobs and metadata

	bin     string
	logPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	closed chan struct{} // closed by the test's cleanup
	bg     sync.WaitGroup
}

// Start starts Azurite for t and stops it when t ends. It skips t when
// Azurite is not installed, or fails it when LIFEBOAT_REQUIRE_INTEGRATION=1.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Find()
	if err != nil {
		testenv.Missing(t, "%v: run .ci/deps (npm install --prefix ~/.cache/lifeboat/azurite-%s azurite@%s) or set %s to azurite-blob",
			err, Version, Version, EnvBinary)
	}
	tmp := t.TempDir()
	s := &Server{
		Account: Account,
		Key:     Key,
		Dir:     filepath.Join(tmp, "data"),
		bin:     bin,
		logPath: filepath.Join(tmp, "azurite.log"),
		closed:  make(chan struct{}),
	}
	if err := os.Mkdir(s.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		close(s.closed)
		s.bg.Wait()
		if err := s.Stop(); err != nil {
			t.Errorf("stop azurite: %v", err)
		}
	})
	// The free port may be taken between asking and Azurite binding it:
	// try a few.
	for try := 0; ; try++ {
		s.Port, err = freePort()
		if err != nil {
			t.Fatal(err)
		}
		s.URL = fmt.Sprintf("http://127.0.0.1:%d/%s", s.Port, Account)
		if err = s.Start(); err == nil || try == 2 {
			break
		}
	}
	if err != nil {
		t.Fatalf("start azurite: %v", err)
	}
	return s
}

// Find returns the azurite-blob executable: LIFEBOAT_AZURITE (azurite-blob,
// or azurite, whose azurite-blob beside it is used), azurite-blob on PATH,
// or the one .ci/deps installs.
func Find() (string, error) {
	var tried []string
	if p := os.Getenv(EnvBinary); p != "" {
		if filepath.Base(p) != "azurite-blob" {
			p = filepath.Join(filepath.Dir(p), "azurite-blob")
		}
		if isExec(p) {
			return p, nil
		}
		tried = append(tried, p+" (from "+EnvBinary+")")
	}
	if p, err := exec.LookPath("azurite-blob"); err == nil {
		return p, nil
	}
	tried = append(tried, "PATH")
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		if home, err := os.UserHomeDir(); err == nil {
			cache = filepath.Join(home, ".cache")
		}
	}
	if cache != "" {
		want := filepath.Join(cache, "lifeboat", "azurite-"+Version, "node_modules", ".bin", "azurite-blob")
		if isExec(want) {
			return want, nil
		}
		// Another version left by an older .ci/deps: newest name last.
		others, _ := filepath.Glob(filepath.Join(cache, "lifeboat", "azurite-*", "node_modules", ".bin", "azurite-blob"))
		slices.Sort(others)
		for _, p := range slices.Backward(others) {
			if isExec(p) {
				return p, nil
			}
		}
		tried = append(tried, want)
	}
	if _, err := exec.LookPath("node"); err != nil {
		tried = append(tried, "node is not installed either")
	}
	return "", fmt.Errorf("%w (looked at %v)", ErrNotInstalled, tried)
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ConnectionString is the connection string of the account, for clients
// that take one.
func (s *Server) ConnectionString() string {
	return fmt.Sprintf("DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;BlobEndpoint=%s;", s.Account, s.Key, s.URL)
}

// Start starts Azurite on s.Port with s.Dir, after Stop or when the test
// began, and waits until it answers HTTP requests.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return ErrRunning
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "--- start %s on port %d\n", time.Now().Format(time.RFC3339Nano), s.Port)
	cmd := exec.Command(s.bin,
		"--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(s.Port),
		"--location", s.Dir,
		"--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its own group, killed whole
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("run %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited

	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(startTimeout)
	for {
		// Any HTTP answer (403 without credentials) means it serves.
		resp, err := client.Get(s.URL + "?comp=list")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("azurite exited at start (%v): %s", cmd.ProcessState, s.logTail())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stopLocked()
			return fmt.Errorf("azurite did not answer on %s within %v: %s", s.URL, startTimeout, s.logTail())
		}
	}
}

// Stop stops Azurite: SIGTERM to its process group, which lets it save its
// metadata, SIGKILL when it has not exited after 15 s; it waits for the
// exit. Stopping a stopped server does nothing.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopLocked()
}

func (s *Server) stopLocked() error {
	if s.cmd == nil {
		return nil
	}
	pid := s.cmd.Process.Pid
	s.cmd = nil
	syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-s.exited:
		return nil
	case <-time.After(stopTimeout):
	}
	syscall.Kill(-pid, syscall.SIGKILL)
	<-s.exited
	return fmt.Errorf("azurite (pid %d) ignored SIGTERM for %v and was killed", pid, stopTimeout)
}

// StopFor stops Azurite now and starts it again after d, in the background,
// on the same port and data: an outage of the storage. The returned channel
// delivers the result of the start (nil when the test ended first).
func (s *Server) StopFor(d time.Duration) (<-chan error, error) {
	if err := s.Stop(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		select {
		case <-time.After(d):
			done <- s.Start()
		case <-s.closed:
			done <- nil
		}
	}()
	return done, nil
}

// logTail is the end of Azurite's output, for error messages.
func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return err.Error()
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(bytes.TrimSpace(b))
}

// Container is a shared-key client of container name on s (which may not
// exist yet).
func (s *Server) Container(t testing.TB, name string) *container.Client {
	t.Helper()
	cred, err := container.NewSharedKeyCredential(s.Account, s.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := container.NewClientWithSharedKeyCredential(s.URL+"/"+name, cred, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// NewContainer creates container name on s and returns its client.
func (s *Server) NewContainer(t testing.TB, name string) *container.Client {
	t.Helper()
	c := s.Container(t, name)
	if _, err := c.Create(context.Background(), nil); err != nil {
		t.Fatalf("create container %s: %v", name, err)
	}
	return c
}
