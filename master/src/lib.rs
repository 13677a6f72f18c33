//! berth-master: The berth master: code store and the instance API the main system calls.
