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

// ServerIDFile, in a process server's data directory, holds its id: a UUID
// made on first use and kept across restarts. Targets use it where they
// must tell process servers apart (the id of Azure blob leases), so that a
// restarted server takes its replicas back at once after a crash. It is
// not a secret, but it is this server's own: to set up another process
// server copy only DATA-DIR/pki, never this file.
const ServerIDFile = "process-server-id"

// ServerID returns the id of the process server whose data directory is
// dataDir, creating it durably (temp file, fsync, link, directory fsync)
// the first time.
func ServerID(dataDir string) (string, error) {
	path := filepath.Join(dataDir, ServerIDFile)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			id := strings.TrimSpace(string(b))
			if _, perr := uuid.Parse(id); perr != nil {
				return "", fmt.Errorf("%s: %q is not a UUID; delete the file to get a new id (leases under the old one then expire within a minute)", path, id)
			}
			return id, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("process server id: %w", err)
		}
		err = writeFile(path, []byte(uuid.NewString()+"\n"), 0o644, true)
		if err != nil && !errors.Is(err, ErrExists) {
			return "", fmt.Errorf("process server id: %w", err)
		}
		// Written, or another process wrote it first: read what is there.
	}
}
