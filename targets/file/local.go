package file

import (
	"lifeboat/hrl"
	"lifeboat/targets"
)

var _ targets.Local = (*Target)(nil)

// LocalDir implements targets.Local: the target's directory, or "" when
// its files are not on this machine's file system (an in-memory FS in
// tests).
func (t *Target) LocalDir() string {
	if _, ok := t.FS.(hrl.OSFS); !ok && t.FS != nil {
		return ""
	}
	return t.Dir
}
