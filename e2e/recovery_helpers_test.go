package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"lifeboat/hrl"
	"lifeboat/pipeline"
)

// Helpers of the recovery tests (test failover, failover, planned
// failover): a site that serves recovery volumes over NBD on a port of
// its own, the recovery CLI, and reading a recovery volume over NBD.

// newRecoverySite is a site whose server serves recovery volumes over NBD
// on a free loopback port (never the default 10810, which another test's
// server may hold), with extra server flags.
func newRecoverySite(t *testing.T, extra ...string) *site {
	t.Helper()
	return newSiteWith(t, nil, append([]string{"--recovery-nbd", "127.0.0.1:0"}, extra...))
}

// cliResult is one run of the lifeboat CLI.
type cliResult struct {
	args   []string
	code   int // exit code; -1 when it did not run to an exit
	stdout string
	stderr string
}

func (r cliResult) String() string {
	return fmt.Sprintf("lifeboat %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// out is everything the command printed.
func (r cliResult) out() string { return r.stdout + r.stderr }

// lifeboat runs the lifeboat CLI with args and returns its exit code and
// output, whatever the code.
func lifeboat(t *testing.T, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cliResult{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("lifeboat %s: %v\n%s", strings.Join(args, " "), err, r.out())
	}
	return r
}

// admin runs an admin command of the site (its --server and --data-dir
// added).
func (s *site) cli(args ...string) cliResult {
	s.t.Helper()
	return lifeboat(s.t, append(args, "--server", s.url(), "--data-dir", s.dir)...)
}

// recovery runs a recovery command that must succeed with --output json
// and returns the recovery volume it answers.
func (s *site) recovery(args ...string) pipeline.RecoveryState {
	s.t.Helper()
	r := s.cli(append(args, "--output", "json")...)
	if r.code != 0 {
		s.t.Fatalf("%v", r)
	}
	var st pipeline.RecoveryState
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		s.t.Fatalf("%v: %v", r, err)
	}
	return st
}

// recoveryList is `lifeboat test-failover list --output json`, raw (to
// compare states) and decoded.
func (s *site) recoveryList() (string, []pipeline.RecoveryState) {
	s.t.Helper()
	r := s.cli("test-failover", "list", "--output", "json")
	if r.code != 0 {
		s.t.Fatalf("%v", r)
	}
	var list []pipeline.RecoveryState
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		s.t.Fatalf("%v: %v", r, err)
	}
	return r.stdout, list
}

// failoverOf returns the failover of volume name in list, or nil.
func failoverOf(list []pipeline.RecoveryState, name string) *pipeline.RecoveryState {
	for i := range list {
		if list[i].Kind == pipeline.RecoveryFailover && list[i].Volume.Name == name {
			return &list[i]
		}
	}
	return nil
}

// nbdSum copies the whole NBD export at uri to a file with nbdcopy and
// returns its sha256 (the file is removed).
func nbdSum(t *testing.T, uri string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "nbd.img")
	run(t, "nbdcopy", uri, f)
	defer os.Remove(f)
	return sha256File(t, f)
}

// journalTagSeqs returns the seqs of the tag records in the sealed
// segments of an agent's journal directory for one volume (read only; the
// agent may be running: a segment is read once it is sealed, and a torn
// one, being written, is read as far as it goes).
func journalTagSeqs(t *testing.T, dir string) []uint64 {
	t.Helper()
	var tags []uint64
	for _, path := range journalSegments(t, dir) {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // acknowledged and removed meanwhile
		}
		rd, err := hrl.NewReader(bytes.NewReader(b), int64(len(b)), path)
		if err != nil {
			continue
		}
		for {
			rec, err := rd.Next()
			if err != nil {
				break
			}
			if rec.Type == hrl.TypeTag {
				tags = append(tags, rec.Seq)
			}
		}
	}
	slices.Sort(tags)
	return tags
}

// lastTagAfter reports whether the journal in dir holds a tag with a seq
// above seq.
func lastTagAfter(t *testing.T, dir string, seq uint64) (uint64, bool) {
	t.Helper()
	tags := journalTagSeqs(t, dir)
	if len(tags) == 0 {
		return 0, false
	}
	last := tags[len(tags)-1]
	return last, last > seq
}
