// Package pipeline carries journal segments from an agent to a recovery
// site: the shipper (agent side) streams sealed segments over mutually
// authenticated HTTPS, the process server verifies and spools them durably,
// and the applier replays them in seq order onto a target, turning every
// TAG record into a recovery point.
//
// Wire protocol (HTTPS, TLS 1.3, client certificates from the site's CA):
//
//	GET  /v1/volumes                       volumes and their progress (VolumeStatus list)
//	GET  /v1/volumes/{id}                  one volume's progress: where a shipper resumes
//	POST /v1/volumes/{id}/segments         one sealed segment, zstd-compressed; headers below (agent)
//	GET  /v1/volumes/{id}/points           recovery points, oldest first (admin)
//	GET  /v1/volumes/{id}/points/{seq}     a point's image, Range requests supported (admin)
//	POST /v1/volumes/{id}/machine          {"machine": M}: move the volume to machine M (admin)
//
// {id} is a volume id, MACHINE/NAME (path-escaped), or a NAME that only one
// volume the caller may see has. Who sees what is in access.go: an agent
// certificate reaches only its own machine's volumes (403 otherwise), an
// admin certificate every volume.
//
// A segment is the exact bytes of the agent's .hrl file: the wire format is
// the spool format, no record is re-encoded. The server answers 200 only
// after the segment is fsynced in the spool, or, before the volume's
// first recovery point, committed to the replica (direct.go); 409 when it
// does not continue the volume's journal (the body says which seq it
// expects); 422 when a checksum fails (resend); 408 when the body stalls
// (resend); 503 with Retry-After when the spool or a disk of the site is
// nearly full, or the receive buffers are in use (slow down; see
// diskfree.go); 403 when the volume belongs to another machine. A 200 names the segment it
// acknowledges (AckedGeneration, AckedFirstSeq, AckedLastSeq): the agent
// deletes its copy only when they are the segment's own.
package pipeline

import (
	"cmp"
	"errors"
	"slices"
	"time"

	"lifeboat/targets"
)

// Defaults.
const (
	DefaultAddr         = ":9443"
	DefaultThrottleFree = 0.20 // ASR throttles when less than 20 % of its cache is free
	DefaultSpoolQuota   = 8 << 30
	DefaultTagInterval  = 5 * time.Minute
	DefaultInFlight     = 2 // segments a shipper sends at once (Shipper.InFlight)
	MinTagInterval      = time.Second
	DefaultMaxBackoff   = 30 * time.Second
	maxSegmentWireBytes = 1 << 30
	headerPrefix        = "X-Lifeboat-"
	hdrVolumeName       = headerPrefix + "Volume-Name"
	hdrVolumeSize       = headerPrefix + "Volume-Size"
	hdrBlockSize        = headerPrefix + "Block-Size"
	hdrGeneration       = headerPrefix + "Generation"
	hdrFirstSeq         = headerPrefix + "First-Seq"
	hdrLastSeq          = headerPrefix + "Last-Seq"
	hdrSegmentSize      = headerPrefix + "Segment-Size"
	hdrSegmentSum       = headerPrefix + "Segment-Sum" // xxhash64 of the segment bytes, hex
	// hdrFollows, set to 1, says that the segment directly follows the
	// one before it in the same generation (seq FirstSeq-1), which the
	// agent may still be sending: the server takes it only after that one.
	hdrFollows           = headerPrefix + "Follows"
	hdrPointSeq          = headerPrefix + "Point-Seq"
	hdrPointName         = headerPrefix + "Point-Name"
	hdrPointSize         = headerPrefix + "Point-Size" // the image's size: what a whole download receives
	contentTypeSegment   = "application/x-lifeboat-segment"
	contentEncodingZstd  = "zstd"
	contentEncodingPlain = "identity"
)

// Errors of this package.
var (
	ErrChecksum  = errors.New("segment checksum mismatch")
	ErrGap       = errors.New("segment does not continue the replica's journal")
	ErrSlowDown  = errors.New("process server is throttling")
	ErrPermanent = errors.New("permanent error")
	ErrNoReplica = errors.New("no such volume on this process server")
	ErrForbidden = errors.New("refused by the site")
	ErrAmbiguous = errors.New("volume name is ambiguous")
	// ErrBadAck is an answer of the site that does not match what the
	// agent sent (another segment, a generation or seq the agent never
	// wrote): the agent keeps its journal and says why.
	ErrBadAck = errors.New("the site's answer does not match this agent's journal")
	// ErrRecoveryState is a recovery request the volume's state does not
	// allow (a second test failover, a commit without a failover): 409.
	ErrRecoveryState = errors.New("not possible in the volume's recovery state")
)

// VolumeStatus is a volume's progress as the process server sees it.
type VolumeStatus struct {
	Info targets.VolumeInfo `json:"info"`
	// Spooled is the last seq received and durable in the spool (or
	// applied); a shipper resumes after it.
	SpooledGeneration uint64 `json:"spooled_generation"`
	SpooledSeq        uint64 `json:"spooled_seq"`
	// Applied is the replica's committed state.
	AppliedGeneration uint64 `json:"applied_generation"`
	AppliedSeq        uint64 `json:"applied_seq"`
	SpoolBytes        int64  `json:"spool_bytes"`
	// DirectApplied counts the segments applied straight onto the
	// replica, without a spool copy, since the server opened the volume:
	// only before its first recovery point (direct.go).
	DirectApplied int64 `json:"direct_applied,omitempty"`
	// SegmentsInFlight is how many segments of the volume the server
	// takes at once from its agent, in order (hdrFollows); 0 from a server
	// that takes one at a time.
	SegmentsInFlight int    `json:"segments_in_flight,omitempty"`
	Points           int    `json:"points"`
	LatestPoint      *Point `json:"latest_point,omitempty"`
	ApplyError       string `json:"apply_error,omitempty"`
	// Failed says why the volume's replica cannot be opened (it is retried
	// when its agent sends or asks again); the other fields are then zero.
	Failed string `json:"failed,omitempty"`
	// Throttled says why the server refuses segments (503) while it does:
	// its spool or a disk of the site is nearly full.
	Throttled string `json:"throttled,omitempty"`
	// Recovery lists the volume's test failover and failover, if any.
	Recovery []RecoveryState `json:"recovery,omitempty"`
	// PlannedFailover, while set, asks the volume's agent to stop writes,
	// flush and ship a tag named PlannedTagPrefix + this token.
	PlannedFailover string `json:"planned_failover,omitempty"`
	// RecoveryStep says what a long recovery request on the volume is
	// doing now, with its progress.
	RecoveryStep string `json:"recovery_step,omitempty"`
}

// sortStatus orders volumes by machine, then name.
func sortStatus(st []VolumeStatus) {
	slices.SortFunc(st, func(a, b VolumeStatus) int {
		return cmp.Or(cmp.Compare(a.Info.Machine, b.Info.Machine), cmp.Compare(a.Info.Name, b.Info.Name), cmp.Compare(a.Info.ID, b.Info.ID))
	})
}

// Point is a recovery point as the API shows it.
type Point struct {
	Seq        uint64    `json:"seq"`
	Generation uint64    `json:"generation"`
	Kind       string    `json:"kind"`
	Name       string    `json:"name"`
	Time       time.Time `json:"time"`
}

// APIPoint is p as the API shows it.
func APIPoint(p targets.Point) Point {
	return Point{Seq: p.Seq, Generation: p.Generation, Kind: p.Kind.String(), Name: p.Name, Time: p.Time}
}

// SegmentReply is the body of an answer to a segment (and, with only Error
// set, of every error answer of the API).
type SegmentReply struct {
	// Acked* name the segment a 200 acknowledges: durable in the spool, or
	// already applied.
	AckedGeneration uint64 `json:"acked_generation,omitempty"`
	AckedFirstSeq   uint64 `json:"acked_first_seq,omitempty"`
	AckedLastSeq    uint64 `json:"acked_last_seq,omitempty"`
	// Spooled* is how far the site has the volume.
	SpooledGeneration uint64 `json:"spooled_generation"`
	SpooledSeq        uint64 `json:"spooled_seq"`
	Error             string `json:"error,omitempty"`
	// Throttled, in a 503, is ThrottleDiskFull or ThrottleSpoolFull.
	Throttled string `json:"throttled,omitempty"`
}

// MachineRequest is the body of POST /v1/volumes/{id}/machine.
type MachineRequest struct {
	Machine string `json:"machine"`
}
