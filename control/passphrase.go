package control

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/crypto/scrypt"
)

// The registration passphrase is stored as scrypt(passphrase, salt) only.
// That derived key proves both sides of a registration to each other
// without the passphrase crossing the wire: the agent sends an HMAC of its
// request under the key, the server answers with an HMAC of the
// certificates it returns. Someone who watches a registration can try to
// guess the passphrase offline, one scrypt per guess; a generated
// passphrase has 160 random bits, which makes that hopeless.

// KDF is how the passphrase's key is derived; the salt is per site.
type KDF struct {
	Salt []byte `json:"salt"`
	N    int    `json:"n"`
	R    int    `json:"r"`
	P    int    `json:"p"`
}

// storedPassphrase is the store's record: the KDF and the derived key.
type storedPassphrase struct {
	KDF KDF    `json:"kdf"`
	Key []byte `json:"key"`
}

const (
	metaPassphrase = "passphrase"
	kdfN, kdfR     = 1 << 15, 8
	kdfKeyLen      = 32
	// MaxPassphrase bounds a passphrase read from a file.
	MaxPassphrase = 1024
)

// ErrNoPassphrase: the site has no registration passphrase yet.
var ErrNoPassphrase = errors.New("no registration passphrase: run 'lifeboat server init' (or 'lifeboat server passphrase') on the site")

// DeriveKey is the key a passphrase gives under kdf.
func DeriveKey(passphrase string, kdf KDF) ([]byte, error) {
	if kdf.N < 1<<10 || kdf.N > 1<<20 || kdf.R < 1 || kdf.R > 32 || kdf.P != 1 || len(kdf.Salt) < 16 || len(kdf.Salt) > 64 {
		return nil, fmt.Errorf("unusual key derivation parameters %+v: refusing them", kdf)
	}
	return scrypt.Key([]byte(NormalizePassphrase(passphrase)), kdf.Salt, kdf.N, kdf.R, kdf.P, kdfKeyLen)
}

// NormalizePassphrase drops surrounding space and a trailing newline, so
// that a passphrase file written by echo or an editor works.
func NormalizePassphrase(p string) string { return strings.TrimSpace(p) }

// NewPassphrase makes a random passphrase: 160 bits as 8 groups of 4
// lower-case base32 characters separated by dashes.
func NewPassphrase() (string, error) {
	var b [20]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	s := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
	var groups []string
	for i := 0; i < len(s); i += 4 {
		groups = append(groups, s[i:i+4])
	}
	return strings.Join(groups, "-"), nil
}

// SetPassphrase makes a new registration passphrase, stores its key and
// returns it: the only time it is seen. Earlier passphrases stop working.
func (s *Store) SetPassphrase() (string, error) {
	pass, err := NewPassphrase()
	if err != nil {
		return "", err
	}
	kdf := KDF{Salt: make([]byte, 16), N: kdfN, R: kdfR, P: 1}
	if _, err := rand.Read(kdf.Salt); err != nil {
		return "", err
	}
	key, err := DeriveKey(pass, kdf)
	if err != nil {
		return "", err
	}
	err = s.update(func(tx *bolt.Tx) error {
		return put(tx, bucketMeta, metaPassphrase, storedPassphrase{KDF: kdf, Key: key})
	})
	return pass, err
}

// passphrase returns the stored KDF and key.
func (s *Store) passphrase() (storedPassphrase, error) {
	var sp storedPassphrase
	err := s.view(func(tx *bolt.Tx) error { return get(tx, bucketMeta, metaPassphrase, &sp) })
	if errors.Is(err, ErrNotFound) {
		return sp, ErrNoPassphrase
	}
	return sp, err
}

// Proof labels keep an agent's proof from being replayed as the server's.
const (
	labelAgent  = "lifeboat-register-agent-v1"
	labelServer = "lifeboat-register-server-v1"
)

// mac is HMAC-SHA256 under key of the label and the parts, each
// length-prefixed so that no two lists of parts give the same input.
func mac(key []byte, label string, parts ...[]byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(label))
	for _, p := range parts {
		var n [4]byte
		n[0], n[1], n[2], n[3] = byte(len(p)>>24), byte(len(p)>>16), byte(len(p)>>8), byte(len(p))
		h.Write(n[:])
		h.Write(p)
	}
	return h.Sum(nil)
}

// RequestProof is what a registering agent or process server sends to
// show it knows the passphrase: a MAC over every field of its request.
func RequestProof(key []byte, r RegisterRequest) []byte {
	parts := [][]byte{[]byte(r.Name), r.CSR, []byte(r.Role), []byte(r.URL)}
	for _, h := range r.Hosts {
		parts = append(parts, []byte(h))
	}
	return mac(key, labelAgent, parts...)
}

// ReplyProof is what the server returns to show it knows it too: a MAC
// over the certificates it returns (serverDER is empty for an agent).
func ReplyProof(key []byte, certDER, serverDER, caDER []byte) []byte {
	return mac(key, labelServer, certDER, serverDER, caDER)
}
