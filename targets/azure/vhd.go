package azure

// The replica page blob is a fixed-format VHD so that Azure itself can make a
// managed disk from it (or from a copy of one of its snapshots) after a
// failover: the volume's data from offset 0, then one 512-byte footer in the
// blob's last page. A fixed VHD has no other metadata, so every read of the
// volume is a plain ranged read of the blob.
//
//	offset 0                       VHDDataSize(size)      +512
//	+------------------------------+---------------------+
//	| volume data (zero padded to  | footer (plaintext,  |
//	| a whole MiB)                 | even when the data  |
//	|                              | is encrypted)       |
//	+------------------------------+---------------------+
//
// Footer layout (Microsoft "Virtual Hard Disk Image Format Specification",
// all integers big-endian):
//
//	off size field
//	  0    8 cookie "conectix"
//	  8    4 features (0x2: the reserved bit that must always be set)
//	 12    4 file format version 0x00010000
//	 16    8 data offset (0xFFFFFFFFFFFFFFFF for fixed disks)
//	 24    4 timestamp, seconds since 2000-01-01 00:00:00 UTC
//	 28    4 creator application
//	 32    4 creator version
//	 36    4 creator host OS ("Wi2k")
//	 40    8 original size (bytes)
//	 48    8 current size (bytes)
//	 56    4 disk geometry: cylinders (2), heads (1), sectors per track (1)
//	 60    4 disk type (2 = fixed)
//	 64    4 checksum: one's complement of the sum of all 512 bytes, taken
//	         with the checksum field itself zero
//	 68   16 unique id
//	 84    1 saved state
//	 85  427 reserved, zero

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/google/uuid"
)

// VHD constants.
const (
	// FooterSize is the size of the VHD footer at the end of the blob.
	FooterSize = 512

	// VHDCookie identifies a VHD footer.
	VHDCookie = "conectix"
	// VHDFeatures is the features field: only the "reserved" bit, which
	// the specification says must always be set.
	VHDFeatures = 0x00000002
	// VHDVersion is the file format version 1.0.
	VHDVersion = 0x00010000
	// VHDFixedDataOffset is the data offset of a fixed disk (no dynamic
	// disk header).
	VHDFixedDataOffset = 0xFFFFFFFFFFFFFFFF
	// VHDTypeFixed is the disk type of a fixed disk; 3 is dynamic and 4
	// differencing, which this package does not write or accept.
	VHDTypeFixed = 2

	// VHDCreatorApp is the creator application written by NewFooter.
	// The field is informational for Azure, but other readers decide
	// from it how big the disk is: Virtual PC and QEMU's own "qemu" images
	// are sized by the CHS geometry, which cannot express most sizes
	// exactly (and tops out near 127 GiB), while Hyper-V ("win "),
	// Disk2vhd ("d2v "), XenServer and QEMU's "qem2" images are sized by
	// the current size field. qemu-img (block/vpc.c) trusts the current
	// size only for that list of creators, so a footer with an unknown
	// creator such as "lbt " reads as a smaller, CHS-rounded disk there.
	// "win " is the Hyper-V rule, the one Azure applies too.
	VHDCreatorApp = "win "
	// VHDCreatorHostOS is the host OS Windows and the Azure tools write.
	VHDCreatorHostOS = "Wi2k"
	// VHDCreatorVersion is the creator version written by NewFooter
	// (Lifeboat's VHD writer 1.0).
	VHDCreatorVersion = 0x00010000

	// VHDAlignment is the granularity of a VHD's data size that Azure
	// accepts for a managed disk: a whole number of MiB.
	VHDAlignment = 1 << 20
	// VHDMaxDataSize is the largest data size this package writes: a page
	// blob holds at most 8 TiB, and the footer takes the last page.
	VHDMaxDataSize = 8<<40 - VHDAlignment
)

// Errors of the VHD footer.
var (
	ErrVHDShort    = errors.New("vhd footer: shorter than 512 bytes")
	ErrVHDCookie   = errors.New("vhd footer: no \"conectix\" cookie (not a VHD, or not its last 512 bytes)")
	ErrVHDChecksum = errors.New("vhd footer: checksum mismatch (footer damaged)")
	ErrVHDType     = errors.New("vhd footer: not a fixed disk")
	ErrVHDInvalid  = errors.New("vhd footer: invalid field")
)

// vhdEpoch is the zero of the timestamp field.
var vhdEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// Geometry is a disk's cylinder/head/sector geometry as the VHD footer
// stores it.
type Geometry struct {
	Cylinders       uint16
	Heads           uint8
	SectorsPerTrack uint8
}

// Sectors is the number of 512-byte sectors the geometry addresses.
func (g Geometry) Sectors() int64 {
	return int64(g.Cylinders) * int64(g.Heads) * int64(g.SectorsPerTrack)
}

// Footer is the decoded VHD footer. The checksum is not a field: EncodeFooter
// computes it and DecodeFooter verifies it.
type Footer struct {
	Features       uint32
	Version        uint32
	DataOffset     uint64
	Timestamp      time.Time // whole seconds from 2000-01-01 to 2136-02-07 UTC
	CreatorApp     [4]byte
	CreatorVersion uint32
	CreatorHostOS  [4]byte
	OriginalSize   int64
	CurrentSize    int64
	Geometry       Geometry
	DiskType       uint32
	UniqueID       uuid.UUID
	SavedState     uint8
}

// VHDDataSize is the size of the data part of the replica blob for a volume
// of volumeSize bytes: the volume size rounded up to a whole MiB. Azure makes
// a managed disk only from a fixed VHD whose data size (the footer's current
// size) is a multiple of 1 MiB, so the blob carries up to 1 MiB - 1 bytes of
// zero padding after the volume's last byte, and the footer follows the
// padding. The padding is never written by replication and reads as zeros.
func VHDDataSize(volumeSize int64) int64 {
	if volumeSize <= 0 {
		return 0
	}
	return (volumeSize + VHDAlignment - 1) / VHDAlignment * VHDAlignment
}

// VHDUniqueID is the footer's unique id for a volume: derived from the
// volume id (a name-based UUID in the volume id's namespace), so every
// footer written for the volume carries the same id and a re-written footer
// changes no byte but the timestamp.
func VHDUniqueID(volumeID uuid.UUID) uuid.UUID {
	return uuid.NewSHA1(volumeID, []byte("lifeboat vhd footer"))
}

// NewFooter returns the footer of the replica of a volume of volumeSize bytes
// (VHDDataSize(volumeSize) bytes of data) created at now.
func NewFooter(volumeID uuid.UUID, volumeSize int64, now time.Time) (Footer, error) {
	size := VHDDataSize(volumeSize)
	if size <= 0 || size > VHDMaxDataSize {
		return Footer{}, fmt.Errorf("%w: volume size %d: a VHD page blob holds 1 MiB to %d bytes of data", ErrVHDInvalid, volumeSize, int64(VHDMaxDataSize))
	}
	f := Footer{
		Features:       VHDFeatures,
		Version:        VHDVersion,
		DataOffset:     VHDFixedDataOffset,
		Timestamp:      now,
		CreatorVersion: VHDCreatorVersion,
		OriginalSize:   size,
		CurrentSize:    size,
		Geometry:       CHSGeometry(size / 512),
		DiskType:       VHDTypeFixed,
		UniqueID:       VHDUniqueID(volumeID),
	}
	copy(f.CreatorApp[:], VHDCreatorApp)
	copy(f.CreatorHostOS[:], VHDCreatorHostOS)
	return f, nil
}

// CHSGeometry computes the geometry for a disk of totalSectors 512-byte
// sectors with the algorithm of the VHD specification (appendix "CHS
// Calculation"). The geometry may address fewer sectors than totalSectors;
// disks larger than 65535*16*255 sectors (about 127 GiB) all get the maximum
// geometry, which readers take as "use the current size".
func CHSGeometry(totalSectors int64) Geometry {
	const maxSectors = 65535 * 16 * 255
	if totalSectors > maxSectors {
		totalSectors = maxSectors
	}
	if totalSectors < 0 {
		totalSectors = 0
	}
	var spt, heads, cth int64
	if totalSectors >= 65535*16*63 {
		spt = 255
		heads = 16
		cth = totalSectors / spt
	} else {
		spt = 17
		cth = totalSectors / spt
		heads = (cth + 1023) / 1024
		if heads < 4 {
			heads = 4
		}
		if cth >= heads*1024 || heads > 16 {
			spt = 31
			heads = 16
			cth = totalSectors / spt
		}
		if cth >= heads*1024 {
			spt = 63
			heads = 16
			cth = totalSectors / spt
		}
	}
	return Geometry{Cylinders: uint16(cth / heads), Heads: uint8(heads), SectorsPerTrack: uint8(spt)}
}

// vhdSeconds encodes t as the timestamp field, clamped to its range.
func vhdSeconds(t time.Time) uint32 {
	if t.Before(vhdEpoch) {
		return 0
	}
	s := t.Unix() - vhdEpoch.Unix()
	if s > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(s)
}

// EncodeFooter returns the 512 bytes of f with its checksum.
func EncodeFooter(f Footer) [FooterSize]byte {
	var b [FooterSize]byte
	be := binary.BigEndian
	copy(b[0:8], VHDCookie)
	be.PutUint32(b[8:], f.Features)
	be.PutUint32(b[12:], f.Version)
	be.PutUint64(b[16:], f.DataOffset)
	be.PutUint32(b[24:], vhdSeconds(f.Timestamp))
	copy(b[28:32], f.CreatorApp[:])
	be.PutUint32(b[32:], f.CreatorVersion)
	copy(b[36:40], f.CreatorHostOS[:])
	be.PutUint64(b[40:], uint64(f.OriginalSize))
	be.PutUint64(b[48:], uint64(f.CurrentSize))
	be.PutUint16(b[56:], f.Geometry.Cylinders)
	b[58] = f.Geometry.Heads
	b[59] = f.Geometry.SectorsPerTrack
	be.PutUint32(b[60:], f.DiskType)
	copy(b[68:84], f.UniqueID[:])
	b[84] = f.SavedState
	be.PutUint32(b[64:], vhdChecksum(&b))
	return b
}

// vhdChecksum is the one's complement of the byte sum of b with the
// checksum field taken as zero.
func vhdChecksum(b *[FooterSize]byte) uint32 {
	var sum uint32
	for i, c := range b {
		if i >= 64 && i < 68 {
			continue
		}
		sum += uint32(c)
	}
	return ^sum
}

// DecodeFooter decodes the footer in the first 512 bytes of b (pass the
// blob's last 512 bytes). It verifies the cookie, the checksum and that the
// disk is fixed, and refuses fields EncodeFooter could not have written
// (sizes beyond int64, a saved state other than 0 or 1, non-zero reserved
// bytes), so a footer it accepts encodes back to the same bytes.
func DecodeFooter(b []byte) (Footer, error) {
	if len(b) < FooterSize {
		return Footer{}, fmt.Errorf("%w: got %d", ErrVHDShort, len(b))
	}
	var raw [FooterSize]byte
	copy(raw[:], b)
	if !bytes.Equal(raw[0:8], []byte(VHDCookie)) {
		return Footer{}, fmt.Errorf("%w: cookie %q", ErrVHDCookie, raw[0:8])
	}
	be := binary.BigEndian
	if got, want := be.Uint32(raw[64:]), vhdChecksum(&raw); got != want {
		return Footer{}, fmt.Errorf("%w: stored %#08x, computed %#08x", ErrVHDChecksum, got, want)
	}
	f := Footer{
		Features:       be.Uint32(raw[8:]),
		Version:        be.Uint32(raw[12:]),
		DataOffset:     be.Uint64(raw[16:]),
		Timestamp:      vhdEpoch.Add(time.Duration(be.Uint32(raw[24:])) * time.Second),
		CreatorVersion: be.Uint32(raw[32:]),
		Geometry:       Geometry{Cylinders: be.Uint16(raw[56:]), Heads: raw[58], SectorsPerTrack: raw[59]},
		DiskType:       be.Uint32(raw[60:]),
		SavedState:     raw[84],
	}
	copy(f.CreatorApp[:], raw[28:32])
	copy(f.CreatorHostOS[:], raw[36:40])
	copy(f.UniqueID[:], raw[68:84])
	if f.DiskType != VHDTypeFixed {
		return Footer{}, fmt.Errorf("%w: disk type %d (3 is dynamic, 4 differencing), want %d", ErrVHDType, f.DiskType, VHDTypeFixed)
	}
	orig, cur := be.Uint64(raw[40:]), be.Uint64(raw[48:])
	if orig > math.MaxInt64 || cur > math.MaxInt64 {
		return Footer{}, fmt.Errorf("%w: size %d / %d out of range", ErrVHDInvalid, orig, cur)
	}
	f.OriginalSize, f.CurrentSize = int64(orig), int64(cur)
	if f.SavedState > 1 {
		return Footer{}, fmt.Errorf("%w: saved state %d, want 0 or 1", ErrVHDInvalid, f.SavedState)
	}
	for _, c := range raw[85:] {
		if c != 0 {
			return Footer{}, fmt.Errorf("%w: reserved bytes not zero", ErrVHDInvalid)
		}
	}
	return f, nil
}
