package azure

// Client-side encryption at rest. The replica's data is encrypted with
// AES-256-XTS before it leaves the site, one 4 KiB sector at a time with the
// sector number (offset / 4096) as the tweak, so:
//
//   - ciphertext has the size and the offsets of the plaintext: page
//     alignment, Put Page coalescing and random reads of any 4 KiB-aligned
//     range keep working;
//   - equal plaintext sectors at different offsets encrypt differently;
//   - the cloud never sees the key: it is read from a file or the
//     environment on the site, and the blob carries only a key check value
//     (an HMAC of a constant under the key) that makes a wrong key fail at
//     open instead of returning noise.
//
// XTS has no integrity: a changed ciphertext sector decrypts to garbage, not
// to an error. The transfer's CRC64 and the journal's checksums cover
// transport, not a hostile storage account.

import (
	"bytes"
	"crypto/aes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/crypto/xts"
)

const (
	// SectorSize is the unit of encryption: each 4 KiB sector is one XTS
	// data unit whose tweak is its sector number.
	SectorSize = 4096
	// XTSKeySize is the key length: two AES-256 keys (data and tweak).
	XTSKeySize = 64

	keyCheckLabel = "lifeboat key check v1"
	maxKeyFile    = 4096
)

// Errors of the sector cipher and of key loading.
var (
	ErrKeySize       = errors.New("encryption key: want 64 bytes (AES-256-XTS): a file of 64 raw bytes or 128 hex characters, e.g. from `head -c 64 /dev/urandom`")
	ErrKeyWeak       = errors.New("encryption key: its two 32-byte halves are equal, which voids XTS's security: generate a new random key")
	ErrKeyFormat     = errors.New("encryption key: not 64 raw bytes and not 128 hex characters")
	ErrKeyFilePerm   = errors.New("encryption key file is readable by group or others")
	ErrKeyMissing    = errors.New("encryption key: environment variable not set")
	ErrEncrypted     = errors.New("the replica is encrypted and no encryption key was given")
	ErrWrongKey      = errors.New("encryption key does not match the key this replica was written with")
	ErrSectorAligned = errors.New("encryption: offset and length must be multiples of 4096")
)

// SectorCipher encrypts and decrypts whole 4 KiB sectors of a volume with
// AES-256-XTS. It is safe for concurrent use.
type SectorCipher struct {
	c   *xts.Cipher
	kcv string
}

// NewSectorCipher returns the cipher for a 64-byte key (the first half
// encrypts data, the second the tweak). It keeps no copy of the key.
func NewSectorCipher(key []byte) (*SectorCipher, error) {
	if len(key) != XTSKeySize {
		return nil, fmt.Errorf("%w: got %d bytes", ErrKeySize, len(key))
	}
	if subtle.ConstantTimeCompare(key[:XTSKeySize/2], key[XTSKeySize/2:]) == 1 {
		return nil, ErrKeyWeak
	}
	c, err := xts.NewCipher(aes.NewCipher, key)
	if err != nil {
		return nil, fmt.Errorf("encryption key: %w", err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(keyCheckLabel))
	return &SectorCipher{c: c, kcv: hex.EncodeToString(m.Sum(nil)[:8])}, nil
}

// KeyCheckValue identifies the key without revealing it: the first 8 bytes
// of HMAC-SHA256(key, "lifeboat key check v1") in hex (16 characters). It is
// stored in the replica's metadata when the replica is created.
func (s *SectorCipher) KeyCheckValue() string { return s.kcv }

// CheckKey compares the key check value stored with a replica to this
// cipher's, so a wrong key fails at open rather than decrypting to noise.
func (s *SectorCipher) CheckKey(stored string) error {
	if subtle.ConstantTimeCompare([]byte(stored), []byte(s.kcv)) != 1 {
		return fmt.Errorf("%w (replica's key check value %q, this key's %q): use the key the replica was created with", ErrWrongKey, stored, s.kcv)
	}
	return nil
}

// Encrypt encrypts src, the volume's bytes at offset off, into dst. off and
// len(src) must be multiples of SectorSize; dst must be at least as long as
// src and either be src (in place) or not overlap it.
func (s *SectorCipher) Encrypt(dst, src []byte, off int64) error {
	if err := checkSectors(dst, src, off); err != nil {
		return fmt.Errorf("encrypt: %w", err)
	}
	sector := uint64(off / SectorSize)
	for i := 0; i < len(src); i += SectorSize {
		s.c.Encrypt(dst[i:i+SectorSize], src[i:i+SectorSize], sector)
		sector++
	}
	return nil
}

// Decrypt decrypts src, the replica's bytes at offset off, into dst, with
// the same rules as Encrypt.
func (s *SectorCipher) Decrypt(dst, src []byte, off int64) error {
	if err := checkSectors(dst, src, off); err != nil {
		return fmt.Errorf("decrypt: %w", err)
	}
	sector := uint64(off / SectorSize)
	for i := 0; i < len(src); i += SectorSize {
		s.c.Decrypt(dst[i:i+SectorSize], src[i:i+SectorSize], sector)
		sector++
	}
	return nil
}

func checkSectors(dst, src []byte, off int64) error {
	if off < 0 || off%SectorSize != 0 || len(src)%SectorSize != 0 {
		return fmt.Errorf("%w: offset %d, length %d", ErrSectorAligned, off, len(src))
	}
	if len(dst) < len(src) {
		return fmt.Errorf("destination of %d bytes is shorter than the source's %d", len(dst), len(src))
	}
	if inexactOverlap(dst[:len(src)], src) {
		return errors.New("destination overlaps the source without being it")
	}
	return nil
}

// inexactOverlap reports whether x and y share memory at different offsets,
// which the XTS implementation refuses with a panic.
func inexactOverlap(x, y []byte) bool {
	if len(x) == 0 || len(y) == 0 || &x[0] == &y[0] {
		return false
	}
	xs, ys := uintptr(unsafe.Pointer(&x[0])), uintptr(unsafe.Pointer(&y[0]))
	return xs < ys+uintptr(len(y)) && ys < xs+uintptr(len(x))
}

// ParseKey accepts a key as 64 raw bytes or as 128 hex characters
// (surrounding whitespace ignored).
func ParseKey(b []byte) ([]byte, error) {
	// 64 bytes that are all hex digits are a 32-byte key in hex, not a raw
	// key: a random raw key is never all hex digits.
	if len(b) == XTSKeySize && !isHex(b) {
		return append([]byte(nil), b...), nil
	}
	t := bytes.TrimSpace(b)
	if !isHex(t) {
		return nil, fmt.Errorf("%w: %d bytes", ErrKeyFormat, len(b))
	}
	if len(t) != 2*XTSKeySize {
		return nil, fmt.Errorf("%w: %d hex characters, want %d", ErrKeySize, len(t), 2*XTSKeySize)
	}
	key := make([]byte, XTSKeySize)
	if _, err := hex.Decode(key, t); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKeyFormat, err)
	}
	return key, nil
}

func isHex(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// LoadKey reads a key file: 64 raw bytes or 128 hex characters. The file
// must not be readable by group or others (chmod 600).
func LoadKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("encryption key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("encryption key file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("encryption key file %s: not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o: run chmod 600 %s", ErrKeyFilePerm, path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("encryption key file %s: %w", path, err)
	}
	if len(b) > maxKeyFile {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrKeyFormat, path, maxKeyFile)
	}
	key, err := ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}

// KeyFromEnv reads a key from the environment variable name, as 128 hex
// characters.
func KeyFromEnv(name string) ([]byte, error) {
	v, ok := os.LookupEnv(name)
	if !ok || v == "" {
		return nil, fmt.Errorf("%w: %s", ErrKeyMissing, name)
	}
	if !isHex(bytes.TrimSpace([]byte(v))) {
		return nil, fmt.Errorf("environment variable %s: %w: give the key as 128 hex characters", name, ErrKeyFormat)
	}
	key, err := ParseKey([]byte(v))
	if err != nil {
		return nil, fmt.Errorf("environment variable %s: %w", name, err)
	}
	return key, nil
}
