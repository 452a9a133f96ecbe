package pki

// CheckName returns an error wrapping ErrName unless name is a valid name
// for a certificate's holder (and so for a machine): 1-64 letters, digits,
// '.', '_' or '-', starting with a letter or digit.
func CheckName(name string) error { return checkName(name) }
