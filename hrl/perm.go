package hrl

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Modes of what Lifeboat keeps on disk. Journals, dirty bitmaps, replicas,
// undo logs and spooled segments hold the protected data or describe it,
// so only the user the agent or server runs as may read them.
const (
	PrivateDir  os.FileMode = 0o700
	PrivateFile os.FileMode = 0o600
)

// Chmoder is implemented by an FS with permission bits (OSFS); MakePrivate
// needs it. An FS without it (the in-memory test FS) has nothing to
// tighten.
type Chmoder interface {
	Stat(name string) (fs.FileInfo, error)  // follows a symbolic link
	Lstat(name string) (fs.FileInfo, error) // does not
	Chmod(name string, mode os.FileMode) error
}

var _ Chmoder = OSFS{}

// Stat implements Chmoder.
func (OSFS) Stat(name string) (fs.FileInfo, error) { return os.Stat(name) }

// Lstat implements Chmoder.
func (OSFS) Lstat(name string) (fs.FileInfo, error) { return os.Lstat(name) }

// Chmod implements Chmoder.
func (OSFS) Chmod(name string, mode os.FileMode) error { return os.Chmod(name, mode) }

// MakePrivate takes away every permission beyond PrivateDir from dir and
// the directories under it, and beyond PrivateFile from the regular files
// in them, as an earlier version may have created them with 0755 and 0644.
// dir may be a symbolic link; links, sockets and devices below it are left
// alone. It returns the paths it changed, for the caller to log.
func MakePrivate(fsys FS, dir string) ([]string, error) {
	c, ok := fsys.(Chmoder)
	if !ok {
		return nil, nil
	}
	fi, err := c.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("make %s private: %w", dir, err)
	}
	var changed []string
	err = makePrivate(c, fsys, dir, fi, &changed)
	return changed, err
}

func makePrivate(c Chmoder, fsys FS, path string, fi fs.FileInfo, changed *[]string) error {
	want := PrivateFile
	switch {
	case fi.IsDir():
		want = PrivateDir
	case !fi.Mode().IsRegular():
		return nil
	}
	if perm := fi.Mode().Perm(); perm&^want != 0 {
		if err := c.Chmod(path, perm&want); err != nil {
			return fmt.Errorf("make %s private: %w", path, err)
		}
		*changed = append(*changed, path)
	}
	if !fi.IsDir() {
		return nil
	}
	names, err := fsys.ReadDir(path)
	if err != nil {
		return fmt.Errorf("make %s private: %w", path, err)
	}
	for _, name := range names {
		p := filepath.Join(path, name)
		fi, err := c.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return fmt.Errorf("make %s private: %w", p, err)
		}
		if err := makePrivate(c, fsys, p, fi, changed); err != nil {
			return err
		}
	}
	return nil
}
