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
//	POST /v1/volumes/{id}/segments         one sealed segment, zstd-compressed; headers below
//	GET  /v1/volumes/{id}/points           recovery points, oldest first (admin)
//	GET  /v1/volumes/{id}/points/{seq}     a point's image, Range requests supported (admin)
//
// A segment is the exact bytes of the agent's .hrl file: the wire format is
// the spool format, no record is re-encoded. The server answers 200 only
// after the segment is fsynced in the spool; 409 when it does not continue
// the volume's journal (the body says which seq it expects); 422 when a
// checksum fails (resend); 408 when the body stalls (resend); 503 with
// Retry-After when the spool or a disk of the site is nearly full, or the
// receive buffers are in use (slow down; see diskfree.go).
package pipeline

import (
	"errors"
	"time"

	"lifeboat/targets"
)

// Defaults.
const (
	DefaultAddr          = ":9443"
	DefaultThrottleFree  = 0.20 // ASR throttles when less than 20 % of its cache is free
	DefaultSpoolQuota    = 8 << 30
	DefaultTagInterval   = 5 * time.Minute
	MinTagInterval       = time.Second
	DefaultMaxBackoff    = 30 * time.Second
	maxSegmentWireBytes  = 1 << 30
	headerPrefix         = "X-Lifeboat-"
	hdrVolumeName        = headerPrefix + "Volume-Name"
	hdrVolumeSize        = headerPrefix + "Volume-Size"
	hdrBlockSize         = headerPrefix + "Block-Size"
	hdrGeneration        = headerPrefix + "Generation"
	hdrFirstSeq          = headerPrefix + "First-Seq"
	hdrLastSeq           = headerPrefix + "Last-Seq"
	hdrSegmentSize       = headerPrefix + "Segment-Size"
	hdrSegmentSum        = headerPrefix + "Segment-Sum" // xxhash64 of the segment bytes, hex
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
	Points            int    `json:"points"`
	LatestPoint       *Point `json:"latest_point,omitempty"`
	ApplyError        string `json:"apply_error,omitempty"`
	// Throttled says why the server refuses segments (503) while it does:
	// its spool or a disk of the site is nearly full.
	Throttled string `json:"throttled,omitempty"`
}

// Point is a recovery point as the API shows it.
type Point struct {
	Seq        uint64    `json:"seq"`
	Generation uint64    `json:"generation"`
	Kind       string    `json:"kind"`
	Name       string    `json:"name"`
	Time       time.Time `json:"time"`
}

func apiPoint(p targets.Point) Point {
	return Point{Seq: p.Seq, Generation: p.Generation, Kind: p.Kind.String(), Name: p.Name, Time: p.Time}
}

// SegmentReply is the body of a 200 or 409 answer to a segment.
type SegmentReply struct {
	SpooledGeneration uint64 `json:"spooled_generation"`
	SpooledSeq        uint64 `json:"spooled_seq"`
	Error             string `json:"error,omitempty"`
	// Throttled, in a 503, is ThrottleDiskFull or ThrottleSpoolFull.
	Throttled string `json:"throttled,omitempty"`
}
