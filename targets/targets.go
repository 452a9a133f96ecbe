// Package targets defines where replicas live: the interface every target
// implements (a directory, memory, later Azure page blobs), the recovery
// point and state types the pipeline records in it, and the retention
// schedule that decides which points to keep.
//
// A target holds one replica per protected volume. The process server is the
// only writer of a replica: it applies journal records in seq order with
// Apply, makes them durable with Commit, and turns every TAG record into a
// recovery point with CreatePoint. Everything a target does must be safe to
// repeat after a crash of the process server (see Replica).
package targets

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"time"

	"lifeboat/hrl"
)

// Errors of this package and of its implementations.
var (
	ErrNotFound    = errors.New("not found")
	ErrPointExists = errors.New("a different recovery point already has this seq")
	ErrOutOfRange  = errors.New("extent outside the replica")
	ErrUnaligned   = errors.New("extent not aligned to the target's alignment")
	ErrClosed      = errors.New("replica closed")
	ErrInUse       = errors.New("replica is open by another process server")
)

// Properties are a target's limits, read by the pipeline instead of
// special-casing implementations.
type Properties struct {
	// Alignment is the granularity of offsets and lengths Apply accepts
	// (1 for byte-addressable targets, 512 for page blobs). The pipeline
	// only sends whole journal blocks, so any power of two up to the block
	// size (4096) is met by construction.
	Alignment int64
	// MaxExtent is the largest extent one Apply entry may carry; 0 is no
	// limit. The pipeline splits larger records.
	MaxExtent int64
	// MaxSize is the largest volume the target holds, in bytes; 0 is no
	// limit. The process server refuses a bigger volume before anything of
	// it is stored.
	MaxSize int64
	// Snapshots is true when recovery points are native snapshots of the
	// storage (page blob snapshots) rather than kept by the target itself.
	Snapshots bool
}

// VolumeInfo identifies a protected volume, the machine it belongs to and
// its geometry.
type VolumeInfo struct {
	ID   string `json:"id"`   // the tracker's volume id (a UUID)
	Name string `json:"name"` // the admin's name for it, as given to the agent
	// Machine is the protected machine the volume belongs to: the name
	// (CN) of the agent certificate that created the replica, or the one
	// an admin reassigned it to. Only that machine's agent may write it.
	Machine   string `json:"machine,omitempty"`
	Size      int64  `json:"size"`       // bytes
	BlockSize int    `json:"block_size"` // journal block size
}

// State is what a replica durably records about its progress. After a crash
// State returns the last committed state: every record up to Seq is in the
// replica; records after it may be partly there and are applied again.
type State struct {
	Generation uint64 // journal generation of the last applied record
	Seq        uint64 // last applied seq; 0 before the first
}

// Point is a recovery point: the replica as it was right after the TAG
// record with this seq was applied.
type Point struct {
	Seq        uint64
	Generation uint64
	Kind       hrl.TagKind
	Name       string
	Time       time.Time // the tag's time on the protected server
}

// Extent is one change to apply: len(Data) bytes at Off, or, when Data is
// nil, Len zero bytes at Off (a ZERO record; Trim says it came from a
// discard, which a target may turn into a hole).
type Extent struct {
	Off  int64
	Len  int64
	Data []byte
	Trim bool
}

// Target is a place that holds replicas.
type Target interface {
	Properties() Properties
	// Open opens the replica of a volume, creating an empty one (all zero,
	// info.Size bytes, State zero, owned by info.Machine) when there is
	// none. A replica whose size differs from info.Size is resized. An
	// existing replica keeps the machine it records (Info reports it);
	// one that records none (made before machines were recorded) takes
	// info.Machine. Open fails with ErrInUse if another process holds the
	// replica.
	Open(ctx context.Context, info VolumeInfo) (Replica, error)
	// Volumes lists the replicas the target holds.
	Volumes(ctx context.Context) ([]VolumeInfo, error)
	Close() error
}

// Replica is one volume's copy on a target. Methods are safe for concurrent
// use; Apply, Commit, CreatePoint and DeletePoint are called by one applier
// at a time, OpenPoint and Points by any number of readers meanwhile.
type Replica interface {
	Info() VolumeInfo
	// State returns the last committed state.
	State(ctx context.Context) (State, error)
	// Apply writes extents in order (a later extent wins where two
	// overlap). Extents are aligned to Properties().Alignment and at most
	// MaxExtent long. Nothing is durable until Commit. Applying the same
	// sequence of extents again after a crash must give the same result,
	// whatever part of it was applied before.
	Apply(ctx context.Context, extents []Extent) error
	// Commit makes everything applied so far durable and records st.
	Commit(ctx context.Context, st State) error
	// CreatePoint commits the state {p.Generation, p.Seq} and records the
	// replica's current content as recovery point p. Creating a point that
	// exists (same seq and generation) again succeeds and changes nothing.
	CreatePoint(ctx context.Context, p Point) error
	// Points lists the retained points, oldest first.
	Points(ctx context.Context) ([]Point, error)
	// OpenPoint opens a retained point for reading, in constant time (no
	// copy). Reads see the point's content even while Apply goes on. A
	// point deleted while open fails later reads with ErrNotFound.
	OpenPoint(ctx context.Context, seq uint64) (PointReader, error)
	// DeletePoint removes a point and reclaims the storage only it needed.
	DeletePoint(ctx context.Context, seq uint64) error
	// SetMachine records machine as the volume's owner, durably: Info and
	// Volumes report it from then on, after a reopen too. It is an admin's
	// reassignment of a rebuilt or renamed machine's volume.
	SetMachine(ctx context.Context, machine string) error
	// Usage is the storage the replica uses, points included, in bytes
	// (allocated blocks, not apparent sizes).
	Usage(ctx context.Context) (int64, error)
	Close() error
}

// DiskCloner is a target that can copy a recovery point into a disk its
// cloud can use directly (an Azure page blob that is a fixed VHD, from which
// a managed disk is made), for a failover VM. The copy is in plaintext
// whether or not the replica is encrypted at rest. It returns the new
// disk's URL (no secret in it).
type DiskCloner interface {
	CloneDisk(ctx context.Context, p PointReader, volumeID, name string, progress func(done, total int64)) (string, error)
}

// PointReader reads one recovery point.
type PointReader interface {
	io.ReaderAt
	Point() Point
	Size() int64
	Close() error
}

// CloseAll closes each of rs and joins their errors: what a Target's Close
// does with the replicas still open (collected under its lock, closed
// outside it, since a Replica's Close takes that lock to forget itself).
func CloseAll[R io.Closer](rs []R) error {
	var errs []error
	for _, r := range rs {
		errs = append(errs, r.Close())
	}
	return errors.Join(errs...)
}

// UnmarshalJSON reads a VolumeInfo, including one written before the
// fields had json tags (replica state files and spools of earlier
// versions): their "BlockSize" key is the only one the case-insensitive
// match of encoding/json does not map onto the new keys.
func (v *VolumeInfo) UnmarshalJSON(b []byte) error {
	type plain VolumeInfo
	var in struct {
		plain
		LegacyBlockSize int `json:"BlockSize"`
	}
	if err := json.Unmarshal(b, &in); err != nil {
		return err
	}
	*v = VolumeInfo(in.plain)
	if v.BlockSize == 0 {
		v.BlockSize = in.LegacyBlockSize
	}
	return nil
}

// ChangeLister is a Replica that can tell where its current content may
// differ from a retained recovery point, without reading the data.
type ChangeLister interface {
	// ChangedSince returns the byte ranges (sorted, non-overlapping, merged)
	// where the replica's committed content may differ from point seq; it may
	// over-report (whole blocks, pages), never under-report. ErrNotFound when
	// the point is not retained.
	ChangedSince(ctx context.Context, seq uint64) ([]Range, error)
}

// Range is Len bytes at Off.
type Range struct {
	Off int64 `json:"off"`
	Len int64 `json:"len"`
}
