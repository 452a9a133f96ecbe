package tracker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"lifeboat/hrl"
)

// lockDir takes an exclusive flock on DIR/lock so that two processes never
// append to one journal. The lock dies with the process, so a crash never
// leaves a stale lock behind. In-memory test file systems are not locked.
func lockDir(fsys hrl.FS, dir string) (func(), error) {
	if _, ok := fsys.(hrl.OSFS); !ok {
		return func() {}, nil
	}
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("journal lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is locked by pid %s; stop that agent first",
				ErrLocked, dir, strings.TrimSpace(string(holder)))
		}
		return nil, fmt.Errorf("journal lock: %w", err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { f.Close() }, nil
}
