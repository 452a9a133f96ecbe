// Package e2e holds end-to-end tests that run the lifeboat binary as
// separate processes and drive it with real clients.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"lifeboat/internal/testenv"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lifeboat-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "lifeboat")
	// The test build: -tags faultinject adds the fault-injection variables
	// (LIFEBOAT_FAULT_*, cmd/lifeboat/faults_on.go) that the released
	// binary does not have.
	out, err := exec.Command("go", "build", "-tags", "faultinject", "-o", binary, "lifeboat/cmd/lifeboat").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build lifeboat: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// need skips the test when a tool is missing, unless integration tests are
// required (CI), where that is a failure.
func need(t *testing.T, tools ...string) {
	t.Helper()
	testenv.Tools(t, tools...)
}

// agentProc is a running lifeboat process (agent or server).
type agentProc struct {
	cmd    *exec.Cmd
	uri    map[string]string // volume name -> nbd URI
	mu     sync.Mutex
	output strings.Builder
	exited chan error
	gone   chan struct{} // closed when the process has exited
}

var serving = regexp.MustCompile(`^serving (\S+) \(.*\) (?:at|as) (\S+)$`)

// startAgent starts an agent and waits until it serves every volume.
func startAgent(t *testing.T, args ...string) *agentProc {
	t.Helper()
	a, err := tryAgent(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func tryAgent(t *testing.T, args ...string) (*agentProc, error) {
	t.Helper()
	if !strings.Contains(strings.Join(args, " "), "--nbd") {
		args = append([]string{"--nbd", "127.0.0.1:0"}, args...)
	}
	want := strings.Count(strings.Join(args, " "), "--volume")
	a, err := startProc(t, nil, func(a *agentProc, line string) bool {
		if m := serving.FindStringSubmatch(line); m != nil {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.uri[m[1]] = m[2]
			return len(a.uri) == want
		}
		return false
	}, append([]string{"agent"}, args...)...)
	if err != nil {
		return a, fmt.Errorf("agent: %w", err)
	}
	return a, nil
}

// startProc starts the lifeboat binary with args (and env added to the
// test's environment) and waits until ready returns true for a line of its
// standard output. Everything it prints is kept (Output); the process is
// killed at the end of the test if it is still running.
func startProc(t *testing.T, env []string, ready func(p *agentProc, line string) bool, args ...string) (*agentProc, error) {
	t.Helper()
	a := &agentProc{uri: map[string]string{}, exited: make(chan error, 1), gone: make(chan struct{})}
	a.cmd = exec.Command(binary, args...)
	// If the test binary dies (a -timeout panic skips every cleanup), its
	// servers and agents die with it instead of running on.
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	a.cmd.Env = append(os.Environ(), env...)
	stdout, _ := a.cmd.StdoutPipe()
	a.cmd.Stderr = &lockedWriter{a}
	if err := a.cmd.Start(); err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		select {
		case <-a.gone:
		default:
			a.cmd.Process.Kill()
			<-a.gone
		}
	})
	readyc := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		done := false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(&lockedWriter{a}, line)
			if !done && ready(a, line) {
				done = true
				close(readyc)
			}
		}
		io.Copy(io.Discard, stdout)
		err := a.cmd.Wait()
		close(a.gone)
		a.exited <- err
	}()
	select {
	case <-readyc:
		return a, nil
	case err := <-a.exited:
		a.exited <- err
		return a, fmt.Errorf("%s exited before it was ready: %v\n%s", args[0], err, a.Output())
	case <-time.After(20 * time.Second):
		return a, fmt.Errorf("%s was not ready in 20s:\n%s", args[0], a.Output())
	}
}

type lockedWriter struct{ a *agentProc }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.a.mu.Lock()
	defer w.a.mu.Unlock()
	return w.a.output.Write(p)
}

// Output is everything the agent printed so far.
func (a *agentProc) Output() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.output.String()
}

// stop sends sig and waits for the exit.
func (a *agentProc) stop(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	a.cmd.Process.Signal(sig)
	select {
	case err := <-a.exited:
		return err
	case <-time.After(60 * time.Second):
		a.cmd.Process.Kill()
		t.Fatalf("agent did not exit within 60s of %v:\n%s", sig, a.Output())
		return nil
	}
}

// run runs a command and fails the test with its output on error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
