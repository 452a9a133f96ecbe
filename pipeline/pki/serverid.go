package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/uuid"
)

// LeaseIDFile, in a process server's data directory, holds the id of the
// leases the server's current (or last) run holds on Azure replicas. It is
// not a secret, but it is this server's own: to set up another process
// server copy only DATA-DIR/pki, never this file.
const LeaseIDFile = "process-server-lease-id"

// LeaseIDs makes a new lease id for this run of the process server whose
// data directory is dataDir, records it durably (temp file, fsync, rename,
// directory fsync), and returns it with the previous run's id ("" if none).
// A restarted server takes its replicas back from the previous id at once
// (Azure's Change Lease) instead of waiting for those leases to expire,
// and whatever still carries the previous id (a request of the crashed
// run) is refused from then on.
func LeaseIDs(dataDir string) (current, previous string, err error) {
	path := filepath.Join(dataDir, LeaseIDFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		previous = strings.TrimSpace(string(b))
		if _, perr := uuid.Parse(previous); perr != nil {
			return "", "", fmt.Errorf("%s: %q is not a UUID; delete the file (the leases of the last run then expire within a minute)", path, previous)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return "", "", fmt.Errorf("process server lease id: %w", err)
	}
	current = uuid.NewString()
	if err := writeFile(path, []byte(current+"\n"), 0o644, false); err != nil {
		return "", "", fmt.Errorf("process server lease id: %w", err)
	}
	return current, previous, nil
}
