package failback

import (
	"crypto/sha256"
	"io"

	"lifeboat/targets"
)

// The master target's API, beside the process server's (same port, same
// mutual TLS; only the recovery site's certificate, SiteName, may use it,
// and an admin's may read):
//
//	GET  /v1/master/volumes/{id}          Volume: the primary volume and what it holds that the site never got
//	POST /v1/master/volumes/{id}/hashes   HashRequest: HashSize bytes per block of each range, in order
//	POST /v1/master/volumes/{id}/adopt    AdoptRequest: hand the volume back to its agent (failback's switch)
//
// Reverse replication itself is the process server's segment API: the
// site ships the failover volume's journal to POST /v1/volumes/{id}/segments.

// SiteName is the certificate name (CN) of the recovery site's identity
// for reverse replication: the only writer of a master target's volumes.
const SiteName = "recovery-site"

// DefaultAddr is the master target's port.
const DefaultAddr = ":9444"

// HashBlock is the block size of a reprotect's --verify comparison.
const HashBlock = 4096

// HashSize is the bytes of one block's hash (SHA-256, truncated).
const HashSize = 16

// Volume is a primary volume as the master target reports it.
type Volume struct {
	Info targets.VolumeInfo `json:"info"`
	// Unshipped is what the primary has that the site never acknowledged:
	// failing back rolls it back.
	Unshipped Unshipped `json:"unshipped"`
	// Applied is how far reverse replication has reached the disk.
	AppliedGeneration uint64 `json:"applied_generation"`
	AppliedSeq        uint64 `json:"applied_seq"`
	// Adopted is set once a failback handed the volume back to its agent.
	Adopted *AdoptRequest `json:"adopted,omitempty"`
}

// Unshipped is what a primary volume's journal directory says the site
// lacks: the records of the journal it never acknowledged, and the dirty
// regions of the bitmap (a superset: they also cover acknowledged regions
// kept dirty, and writes an unclean stop may have kept out of the journal).
type Unshipped struct {
	Bytes      int64           `json:"bytes"`   // volume bytes the unacknowledged records change
	Records    int             `json:"records"` // WRITE, ZERO, REF and RESYNC records
	FirstSeq   uint64          `json:"first_seq,omitempty"`
	LastSeq    uint64          `json:"last_seq,omitempty"`
	Dirty      []targets.Range `json:"dirty"`
	DirtyBytes int64           `json:"dirty_bytes"`
	Unclean    string          `json:"unclean,omitempty"` // why the agent's last run may have left writes out of the journal
}

// HashRequest asks for the hashes of the blocks of ranges.
type HashRequest struct {
	Block  int64           `json:"block"` // bytes per hash; default HashBlock
	Ranges []targets.Range `json:"ranges"`
}

// AdoptRequest hands a primary volume back to its agent: its journal
// directory is rebased (tracker.Rebase) on the failback's replica state,
// so forward replication resumes in Generation from NextSeq with no
// initial replication. The disk must have applied TagSeq.
type AdoptRequest struct {
	Generation uint64 `json:"generation"`
	NextSeq    uint64 `json:"next_seq"`
	TagSeq     uint64 `json:"tag_seq"`
}

// hashBlocks hashes each block of [off, off+n) of r into out (HashSize
// bytes per block), reusing buf.
func hashBlocks(r io.ReaderAt, off, n, block int64, buf []byte, out []byte) ([]byte, error) {
	if int64(len(buf)) < block {
		buf = make([]byte, block)
	}
	for pos := off; pos < off+n; {
		c := min(int64(len(buf))/block*block, off+n-pos)
		if _, err := r.ReadAt(buf[:c], pos); err != nil {
			return out, err
		}
		for i := int64(0); i < c; i += block {
			sum := sha256.Sum256(buf[i:min(i+block, c)])
			out = append(out, sum[:HashSize]...)
		}
		pos += c
	}
	return out, nil
}

// blocks is how many hashes a range of n bytes has.
func blocks(n, block int64) int64 { return (n + block - 1) / block }
