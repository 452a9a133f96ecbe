package tracker

import (
	"errors"
	"fmt"
	"path/filepath"

	"lifeboat/hrl"
	"lifeboat/internal/dirlock"
)

// lockDir takes an exclusive flock on DIR/lock so that two processes never
// append to one journal. The lock dies with the process, so a crash never
// leaves a stale lock behind. In-memory test file systems are not locked.
func lockDir(fsys hrl.FS, dir string) (func(), error) {
	if _, ok := fsys.(hrl.OSFS); !ok {
		return func() {}, nil
	}
	release, err := dirlock.Lock(filepath.Join(dir, "lock"))
	if errors.Is(err, dirlock.ErrLocked) {
		return nil, fmt.Errorf("%w: %s is %v; stop that agent first", ErrLocked, dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("journal lock: %w", err)
	}
	return release, nil
}
