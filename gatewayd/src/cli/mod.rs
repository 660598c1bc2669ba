//! nkmc CLI
