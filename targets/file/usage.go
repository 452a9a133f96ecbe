package file

import (
	"context"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"

	"lifeboat/hrl"
	"lifeboat/targets"
)

// Usage implements targets.Replica: the blocks allocated to replica.img,
// the undo logs and their index files (stat st_blocks). On a file system
// other than the real one (tests), the apparent sizes of replica.img and
// the undo logs stand in.
func (r *Replica) Usage(ctx context.Context) (int64, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return 0, fmt.Errorf("replica %s: %w", r.info.ID, targets.ErrClosed)
	}
	files := make([]hrl.File, 0, len(r.logs)+1)
	paths := make([]string, 0, len(r.logs)+1)
	files = append(files, r.img)
	paths = append(paths, filepath.Join(r.dir, imageName))
	for _, u := range r.logs {
		files = append(files, u.f)
		paths = append(paths, u.path)
	}
	_, real := r.fs.(hrl.OSFS)
	var total int64
	for i, path := range paths {
		if real {
			var st unix.Stat_t
			if err := unix.Stat(path, &st); err != nil {
				return 0, fmt.Errorf("usage of %s: %w", path, err)
			}
			total += st.Blocks * 512
			if i > 0 && unix.Stat(indexPath(path), &st) == nil {
				total += st.Blocks * 512
			}
			continue
		}
		n, err := files[i].Size()
		if err != nil {
			return 0, fmt.Errorf("usage of %s: %w", path, err)
		}
		total += n
	}
	return total, nil
}
