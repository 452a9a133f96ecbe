package azure

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"lifeboat/hrl"
	"lifeboat/targets"
)

// Blob metadata keys. Azure keys are C# identifiers, case-insensitive, and
// values must be ASCII: names are percent-encoded.
const (
	metaVolumeID   = "lifeboatvolume"
	metaName       = "lifeboatname"
	metaMachine    = "lifeboatmachine"
	metaSize       = "lifeboatsize"
	metaBlockSize  = "lifeboatblocksize"
	metaGeneration = "lifeboatgeneration"
	metaSeq        = "lifeboatseq"
	metaKind       = "lifeboatkind"
	metaPointName  = "lifeboatpoint"
	metaTime       = "lifeboattime"
	metaKeyCheck   = "lifeboatkeycheck"
)

// stateMetadata is the replica blob's own metadata: the volume and the
// last committed (generation, seq).
func stateMetadata(info targets.VolumeInfo, st targets.State, keyCheck string) map[string]string {
	m := map[string]string{
		metaVolumeID:   info.ID,
		metaName:       url.QueryEscape(info.Name),
		metaSize:       strconv.FormatInt(info.Size, 10),
		metaBlockSize:  strconv.Itoa(info.BlockSize),
		metaGeneration: strconv.FormatUint(st.Generation, 10),
		metaSeq:        strconv.FormatUint(st.Seq, 10),
	}
	if keyCheck != "" {
		m[metaKeyCheck] = keyCheck
	}
	if info.Machine != "" {
		m[metaMachine] = url.QueryEscape(info.Machine)
	}
	return m
}

// get reads a key case-insensitively: services may return them in any case.
func get(m map[string]*string, key string) (string, bool) {
	for k, v := range m {
		if strings.EqualFold(k, key) && v != nil {
			return *v, true
		}
	}
	return "", false
}

// parseStateMetadata reads what stateMetadata wrote; a blob without it is
// not a Lifeboat replica.
func parseStateMetadata(m map[string]*string) (targets.VolumeInfo, targets.State, string, error) {
	var info targets.VolumeInfo
	var st targets.State
	var err error
	str := func(k string) string {
		v, ok := get(m, k)
		if !ok && err == nil {
			err = fmt.Errorf("metadata %s missing: not a Lifeboat replica, or written by another tool", k)
		}
		return v
	}
	num := func(k string) uint64 {
		s := str(k)
		if err != nil {
			return 0
		}
		n, perr := strconv.ParseUint(s, 10, 64)
		if perr != nil {
			err = fmt.Errorf("metadata %s=%q: %v", k, s, perr)
		}
		return n
	}
	info.ID = str(metaVolumeID)
	name := str(metaName)
	info.Size = int64(num(metaSize))
	info.BlockSize = int(num(metaBlockSize))
	st.Generation = num(metaGeneration)
	st.Seq = num(metaSeq)
	if err != nil {
		return info, st, "", err
	}
	if info.Name, err = url.QueryUnescape(name); err != nil {
		return info, st, "", fmt.Errorf("metadata %s: %v", metaName, err)
	}
	if machine, ok := get(m, metaMachine); ok { // absent on replicas of earlier versions
		if info.Machine, err = url.QueryUnescape(machine); err != nil {
			return info, st, "", fmt.Errorf("metadata %s: %v", metaMachine, err)
		}
	}
	keyCheck, _ := get(m, metaKeyCheck)
	return info, st, keyCheck, nil
}

// pointMetadata describes a recovery point on its snapshot.
func pointMetadata(p targets.Point) map[string]string {
	return map[string]string{
		metaSeq:        strconv.FormatUint(p.Seq, 10),
		metaGeneration: strconv.FormatUint(p.Generation, 10),
		metaKind:       strconv.Itoa(int(p.Kind)),
		metaPointName:  url.QueryEscape(p.Name),
		metaTime:       p.Time.UTC().Format(time.RFC3339Nano),
	}
}

// parsePointMetadata reads what pointMetadata wrote.
func parsePointMetadata(m map[string]*string) (targets.Point, error) {
	var p targets.Point
	field := func(k string) (string, error) {
		v, ok := get(m, k)
		if !ok {
			return "", fmt.Errorf("snapshot metadata %s missing: not a Lifeboat recovery point", k)
		}
		return v, nil
	}
	var errs []error
	parse := func(k string, fn func(string) error) {
		v, err := field(k)
		if err == nil {
			err = fn(v)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("snapshot metadata %s: %w", k, err))
		}
	}
	parse(metaSeq, func(v string) (err error) { p.Seq, err = strconv.ParseUint(v, 10, 64); return })
	parse(metaGeneration, func(v string) (err error) { p.Generation, err = strconv.ParseUint(v, 10, 64); return })
	parse(metaKind, func(v string) error {
		k, err := strconv.ParseUint(v, 10, 8)
		p.Kind = hrl.TagKind(k)
		return err
	})
	parse(metaPointName, func(v string) (err error) { p.Name, err = url.QueryUnescape(v); return })
	parse(metaTime, func(v string) (err error) { p.Time, err = time.Parse(time.RFC3339Nano, v); return })
	if len(errs) > 0 {
		return p, errs[0]
	}
	return p, nil
}
