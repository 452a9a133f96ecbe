package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"
)

// volumeSpec is one --volume NAME=PATH[,size=SIZE][,ro] of the agent.
type volumeSpec struct {
	Name     string
	Path     string
	Size     int64 // create a sparse file of this size when PATH does not exist
	ReadOnly bool
}

var volumeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// parseVolumeSpec parses NAME=PATH[,size=SIZE][,ro].
func parseVolumeSpec(s string) (volumeSpec, error) {
	var v volumeSpec
	name, rest, ok := strings.Cut(s, "=")
	if !ok || rest == "" {
		return v, fmt.Errorf("--volume %q: want NAME=PATH[,size=SIZE][,ro], e.g. db=/dev/sdb or scratch=/srv/scratch.img,size=10GiB", s)
	}
	if !volumeName.MatchString(name) {
		return v, fmt.Errorf("--volume %q: name %q must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (it is the NBD export name and the FUSE file name)", s, name)
	}
	parts := strings.Split(rest, ",")
	v.Name, v.Path = name, parts[0]
	if v.Path == "" {
		return v, fmt.Errorf("--volume %q: empty path", s)
	}
	for _, p := range parts[1:] {
		switch k, val, _ := strings.Cut(p, "="); k {
		case "size":
			n, err := parseSize(val)
			if err != nil || n <= 0 || n%512 != 0 {
				return v, fmt.Errorf("--volume %q: size=%s must be a positive multiple of 512 bytes, like 1GiB", s, val)
			}
			v.Size = n
		case "ro":
			v.ReadOnly = true
		default:
			return v, fmt.Errorf("--volume %q: unknown option %q (known: size=SIZE, ro)", s, p)
		}
	}
	return v, nil
}

// prepare makes sure the backing store exists: a block device or file is
// used as it is; with size= a missing file is created sparse. An existing
// file of another size is refused rather than resized.
func (v volumeSpec) prepare() error {
	st, err := os.Stat(v.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && v.Size > 0:
		f, err := os.OpenFile(v.Path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("volume %s: create %s: %w", v.Name, v.Path, err)
		}
		err = f.Truncate(v.Size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("volume %s: size %s: %w", v.Name, v.Path, err)
		}
		return nil
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("volume %s: %s does not exist; add ,size=SIZE to create a sparse file", v.Name, v.Path)
	case err != nil:
		return fmt.Errorf("volume %s: %w", v.Name, err)
	case st.Mode()&os.ModeDevice != 0:
		if v.Size > 0 {
			return fmt.Errorf("volume %s: %s is a block device; size= only applies to files", v.Name, v.Path)
		}
		return nil
	case !st.Mode().IsRegular():
		return fmt.Errorf("volume %s: %s is neither a block device nor a regular file", v.Name, v.Path)
	case v.Size > 0 && st.Size() != v.Size:
		return fmt.Errorf("volume %s: %s exists with %d bytes, not size=%d; Lifeboat never resizes a protected volume (drop size= to use it as it is)",
			v.Name, v.Path, st.Size(), v.Size)
	}
	return nil
}
