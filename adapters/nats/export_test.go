package inboxnats

// SetOnSet makes c call f after each Set, with the number of its records
// and its error.
func SetOnSet(c *Consumer, f func(records int, err error)) { c.onSet = f }
